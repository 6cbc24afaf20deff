"""What every command shares: the one-line error, argument types, flags derived from config dataclasses,
and the options several commands take (declared once, added as argparse parents)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import DATASETS
from ..files import ensure_writable_dir
from ..precision import PRECISION_CHOICES
from ..validation import MAX_SEED

__all__ = [
    "MODEL_FLAGS",
    "SEED",
    "Parser",
    "Shared",
    "UsageError",
    "add_config_flags",
    "class_labels",
    "device_name",
    "field_docs",
    "float_list",
    "int_up_to",
    "image_outputs",
    "output_path",
    "positive_int",
    "read_contexts",
    "signed_float_list",
]


class UsageError(ValueError):
    """Bad command-line input."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"glowtorch: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- argument types
def signed_float_list(text: str, minimum: float = -math.inf) -> list[float]:
    """Comma-separated finite numbers, each >= ``minimum``."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not (minimum <= v < math.inf) for v in values):
        bound = "" if minimum == -math.inf else f" >= {minimum:g}"
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers{bound}, got {text!r}")
    return values


MAX_TEMPERATURE = 10.0  # beyond it samples are noise, and far beyond (1e308) not even finite numbers


def float_list(text: str) -> list[float]:
    """Comma-separated temperatures from 0 to ``MAX_TEMPERATURE``."""
    values = signed_float_list(text, minimum=0.0)
    if max(values) > MAX_TEMPERATURE:
        raise argparse.ArgumentTypeError(f"temperatures run from 0 to {MAX_TEMPERATURE:g}, got {text[:40]!r}")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def int_up_to(maximum: int, minimum: int = 1):
    """An argparse type: an integer from ``minimum`` to ``maximum`` (sizes that would otherwise ask for more
    memory than any machine has, or ports)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"expected an integer from {minimum} to {maximum:,}, got {text[:40]}")
        return value

    convert.__name__ = f"integer up to {maximum}"
    return convert


def device_name(text: str) -> str:
    """A device this machine has (``--device``): cpu, cuda, cuda:N or mps."""
    from ..validation import check_device

    try:
        check_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


SEED = int_up_to(MAX_SEED, minimum=0)


# --------------------------------------------------------------------------- flags from dataclasses
def _argument_type(parse):
    """A field's own parser as an argparse type: its ValueError message becomes argparse's."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def field_docs(cls: type) -> dict[str, str]:
    """``{field: text}`` from the "Attributes:" section of ``cls``'s docstring (an entry may name several
    fields, as in ``epochs / steps / max_minutes: ...``)."""
    docs: dict[str, str] = {}
    names: list[str] = []
    section = (inspect.getdoc(cls) or "").partition("Attributes:")[2]
    for line in section.splitlines():
        entry = re.match(r"^    (\w[\w ,/]*):\s*(.*)$", line)
        if entry:
            names = re.findall(r"\w+", entry.group(1))
            for name in names:
                docs[name] = entry.group(2)
        elif line.startswith("        ") and names:
            for name in names:
                docs[name] += " " + line.strip()
    return docs


def _scalar_type(hint) -> type:
    """``int`` for ``int | None``; the hint itself otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> list[str]:
    """One flag per field of the dataclass ``cls`` (``--batch-size`` for ``batch_size``; booleans get
    ``--x/--no-x``); a flag not given is absent from the parsed namespace. Returns the fields' names."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    names = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = _scalar_type(hints[f.name])
        options: dict = {"default": argparse.SUPPRESS, "help": docs.get(f.name, "").replace("%", "%%")}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            options.update(type=float_list, metavar="X,Y,...")
        elif "parse" in f.metadata:
            options.update(type=_argument_type(f.metadata["parse"]), metavar=f.name.upper())
        else:
            options["type"] = kind
            if "choices" in f.metadata:
                options["choices"] = f.metadata["choices"]
        parser.add_argument("--" + f.name.replace("_", "-"), **options)
        names.append(f.name)
    return names


MODEL_FLAGS = ("image_shape", "num_classes")  # GlowConfig fields that come from the data, not from flags


# --------------------------------------------------------------------------- helpers
def output_path(path: str | Path, inputs: Sequence[str | Path] = ()) -> Path:
    """``path`` as an output file, its folder created and checked writable; ``UsageError`` when it is one of
    the command's ``inputs`` (an input is never overwritten)."""
    output = Path(path)
    _refuse_inputs([output], inputs)
    ensure_writable_dir(output.parent)
    return output


def image_outputs(folder: str | Path, names: Sequence[str], inputs: Sequence[str | Path] = ()) -> list[Path]:
    """``folder/NAME.png`` for each image's name, the folder created and checked writable. ``UsageError`` when
    two images share a name (one output would replace the other) or an output is one of ``inputs``."""
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise UsageError(
                f"two images are named {name!r} (numbers {seen[name] + 1} and {index + 1}): their outputs "
                f"{name}.png would replace each other; rename one"
            )
        seen[name] = index
    paths = [Path(folder) / f"{name}.png" for name in names]
    _refuse_inputs(paths, inputs)
    ensure_writable_dir(folder)
    return paths


def _refuse_inputs(outputs: Sequence[Path], inputs: Sequence[str | Path]) -> None:
    given = {Path(p).resolve() for p in inputs}
    for output in outputs:
        if output.resolve() in given:
            raise UsageError(f"the output {output} is one of the inputs: choose another --output")


def class_labels(model, label: int | None, n: int) -> torch.Tensor | None:
    """Labels for a class-conditional model: ``label`` for all n, else cycling through the classes; None for
    an unconditional model (which refuses ``--label``)."""
    if label is None:
        return torch.arange(n) % model.config.num_classes if model.config.num_classes else None
    return torch.full((n,), model.config.check_class(label, "--label"))


def read_contexts(model, paths: list[str] | None, required: str | None = None) -> torch.Tensor | None:
    """The model-space contexts ``(N, C, h, w)`` of the low-resolution image files ``paths`` (``--context``) for
    a model trained with ``--condition lowres:F``; None without ``paths``, unless ``required`` (what needs
    them) makes that a usage error for a conditional model. One-line errors for contexts that do not fit."""
    from ..context import condition_kind, context_from_lowres
    from ..data import DataError, read_image_files

    config = model.config
    kind = condition_kind(config.condition)
    if kind == "tensor":
        raise UsageError(
            f"this model's context ({config.condition}) is made by your own code: pass it with the Python API "
            "(context=...); --context takes low-resolution images"
        )
    c, h, w = config.context_shape or (0, 0, 0)
    wanted = f"{w}x{h} {'greyscale' if c == 1 else 'RGB'} image"
    if not paths:
        if kind and required:
            raise UsageError(
                f"the model is conditioned on a low-resolution image ({config.condition}): {required} needs "
                f"--context FILE, a {wanted} (glowtorch lowres makes one from a {config.image_shape[2]}x"
                f"{config.image_shape[1]} image)"
            )
        return None
    if not kind:
        raise UsageError("the model has no context (it was trained without --condition): drop --context")
    try:
        lowres = read_image_files(paths, config.context_shape)
    except DataError as error:
        raise UsageError(f"--context: {error} (the model's context is a {wanted})") from None
    return context_from_lowres(lowres, config.n_bits)


def _parent(*arguments: tuple[tuple, dict]) -> argparse.ArgumentParser:
    """A parent parser holding options that several commands share, declared once."""
    parent = argparse.ArgumentParser(add_help=False)
    for names, options in arguments:
        parent.add_argument(*names, **options)
    return parent


@dataclass(frozen=True)
class Shared:
    """The options several commands take, each declared once as an argparse parent."""

    device: argparse.ArgumentParser
    model: argparse.ArgumentParser
    label: argparse.ArgumentParser
    scale: argparse.ArgumentParser
    progress: argparse.ArgumentParser
    precision: argparse.ArgumentParser
    dataset: argparse.ArgumentParser

    @classmethod
    def build(cls) -> Shared:
        model_help = "model directory, run directory, or pretrained:NAME (a shipped model, see glowtorch pretrained)"
        return cls(
            device=_parent((("--device",), dict(default="cpu", type=device_name, help="cpu, cuda or cuda:N"))),
            model=_parent((("checkpoint",), dict(help=model_help))),
            label=_parent(
                (("--label",), dict(type=int, help="class of the images or samples (class-conditional models)"))
            ),
            scale=_parent((("--scale",), dict(type=int_up_to(64), default=1, help="pixel size in the PNG (1 to 64)"))),
            progress=_parent((("--no-progress",), dict(action="store_true", help="no progress bar"))),
            precision=_parent(
                (
                    ("--precision",),
                    dict(
                        choices=PRECISION_CHOICES,
                        default="auto",
                        help="coupling networks in bfloat16 or float32; auto: bfloat16 where this device "
                        "runs it at least 1.2x faster (measured)",
                    ),
                )
            ),  # fmt: skip
            dataset=_parent(
                (("--dataset",), dict(required=True, choices=sorted(DATASETS))),
                (("--data-dir",), dict(help="folder holding the dataset's files")),
            ),
        )
