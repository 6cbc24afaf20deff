"""Values that come from outside the program: typed reading of dataclasses from JSON, and sizes checked
against the machine before anything is allocated.

Every reader of a file glowtorch did not write (``config.json``, ``train_config.json``, a training state,
a converter's checkpoint) goes through here, so a hostile or careless file ends in one ``ValueError`` that
names the field, never in a traceback deep inside the model or an allocation of terabytes.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing

__all__ = [
    "MAX_FLOW_STEPS",
    "MAX_SEED",
    "available_memory",
    "check_allocation",
    "check_device",
    "check_field_types",
    "dataclass_from_dict",
    "format_bytes",
]

MAX_FLOW_STEPS = 10_000  # levels x depth; the paper's largest model has 6 x 32 = 192
MAX_SEED = 2**63 - 1  # seeds are 0 to MAX_SEED: what torch.Generator.manual_seed takes, everywhere


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(hint: object) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        inner = _describe(args[0]) if args else "values"
        count = "" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)} "
        return f"a list of {count}{inner.removeprefix('an ').removeprefix('a ')}s"
    return str(hint)


def _convert(value: object, hint: object) -> tuple[bool, object]:
    """(True, value as the field holds it) when ``value`` has the type ``hint``, else (False, None)."""
    if hint is typing.Any:
        return True, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return _is_int(value), int(value) if _is_int(value) else None
    if hint is float:
        if _is_number(value) and math.isfinite(value):
            return True, value
        return False, None
    if hint is str:
        return isinstance(value, str), value
    if hint is type(None):
        return value is None, None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            ok, converted = _convert(value, option)
            if ok:
                return True, converted
        return False, None
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False, None
        args = typing.get_args(hint)
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(value):
            return False, None
        out = []
        for item, kind in zip(value, kinds, strict=True):
            ok, converted = _convert(item, kind)
            if not ok:
                return False, None
            out.append(converted)
        return True, tuple(out)
    return True, value  # a type this reader does not know: the dataclass checks it


def check_field_types(cls: type, values: dict) -> dict:
    """``values`` for ``cls``'s fields with each one checked against its annotation (lists become tuples);
    ``ValueError`` naming the first field of the wrong type."""
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in values.items():
        ok, converted = _convert(value, hints.get(name, typing.Any))
        if not ok:
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise ValueError(f"{name} must be {_describe(hints[name])}, got {shown}")
        out[name] = converted
    return out


def dataclass_from_dict(cls, values: object, what: str, ignore: tuple[str, ...] = ()):
    """``cls(**values)`` from a JSON object: keys in ``ignore`` dropped, other unknown keys refused with a
    message naming them, every value checked against its field's type (``ValueError``, never ``TypeError``)."""
    if not isinstance(values, dict):
        raise ValueError(f"{what} must be a JSON object of fields, got a {type(values).__name__}")
    values = {k: v for k, v in values.items() if k not in ignore}
    unknown = sorted(str(k) for k in set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)}")
    return cls(**check_field_types(cls, values))


def available_memory() -> int:
    """Bytes this process can still allocate: ``MemAvailable`` (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40  # unknown: a terabyte, so only absurd sizes are refused


def format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} PB"


def check_allocation(nbytes: float, what: str, hint: str) -> None:
    """``ValueError`` when ``what`` would need more than the memory this machine has left (``nbytes``,
    estimated before anything is allocated); ``hint`` says how to ask for less."""
    free = available_memory()
    if nbytes > free:
        raise ValueError(
            f"{what} needs about {format_bytes(nbytes)}, more than the {format_bytes(free)} of memory available; {hint}"
        )


def check_device(device: object) -> object:
    """``torch.device(device)`` when this machine has it; ``ValueError`` in words otherwise (an unknown name,
    CUDA on a machine without it, a GPU index past the last)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is available here; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPUs")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}: MPS is not available here; use --device cpu")
    elif parsed.type != "cpu":
        raise ValueError(f"device {device!r}: glowtorch runs on cpu, cuda or mps")
    return parsed
