"""What training and users save and load.

- A model: ``config.json`` (the architecture) + ``model.safetensors`` in one directory (no pickle).
- A training state: ``RUN/checkpoints/step_N.pt`` (model, EMA, optimizer, counters, RNG), written
  atomically and loaded with ``torch.load(weights_only=True)``.
- Where a command finds a model: a model directory, a run directory holding ``model/``, or a model
  shipped with the package, ``pretrained:NAME``.
"""

from __future__ import annotations

import ast
import json
import math
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .files import atomic_write, first_line
from .model import Glow, GlowConfig
from .pretrained import is_pretrained, pretrained_dir
from .validation import check_device

__all__ = [
    "CheckpointError",
    "checkpoint_paths",
    "checkpoint_step",
    "holds_run",
    "require_new_model_dir",
    "require_new_run",
    "load_baseline",
    "load_model",
    "load_pretrained",
    "load_training_state",
    "resolve_checkpoint",
    "rng_state",
    "save_model",
    "save_training_state",
    "set_rng_state",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKPOINT_PREFIX = "step_"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


def save_model(model: Glow, directory: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Writes ``config.json`` and ``model.safetensors`` to ``directory`` (created if needed).

    Pass the unwrapped model (not a DDP- or compile-wrapped one). Refuses non-finite weights.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to save non-finite weights ({bad[0]}{' and others' if len(bad) > 1 else ''})")
    config_text = json.dumps(model.config.to_dict(), indent=2) + "\n"
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata=metadata or {}))
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(config_text))
    return directory


def require_new_model_dir(directory: str | Path) -> Path:
    """``directory`` as a ``Path``; ``ValueError`` if it already holds a model (its files are never overwritten)."""
    directory = Path(directory)
    if (directory / WEIGHTS_NAME).exists() or (directory / CONFIG_NAME).exists():
        raise ValueError(f"{directory} already holds a model; choose a new --out folder")
    return directory


def load_config(directory: str | Path) -> GlowConfig:
    """The ``GlowConfig`` of a model directory's ``config.json``."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a checkpoint directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        return GlowConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} is not a valid glowtorch config ({error})") from None


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> Glow:
    """Loads a model saved by ``save_model`` (from its directory, a run directory holding ``model/``, or
    ``pretrained:NAME``); its ActNorm layers keep their saved state. It computes with the default ``ComputeConfig``."""
    check_device(device)  # before the file: an unknown device is not a damaged file
    directory = resolve_checkpoint(directory)
    config = load_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found: a checkpoint directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(f"{weights} is corrupt or truncated ({error}); re-save or re-download it") from None
    model = Glow(config).to(device)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise CheckpointError(
            f"{weights} does not match its config.json ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} mis-shaped tensors, e.g. {first}); the files come from different models"
        )
    wrong_dtype = sorted(k for k in state if state[k].dtype != expected[k].dtype)
    if wrong_dtype:
        key = wrong_dtype[0]
        raise CheckpointError(
            f"{weights} holds {state[key].dtype} weights ({key}) where the model has {expected[key].dtype}; "
            "the file was not written by glowtorch"
        )
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(
            f"{weights} holds non-finite weights ({bad[0]}{' and others' if len(bad) > 1 else ''}); "
            "the model diverged or the file is damaged: use an earlier checkpoint"
        )
    model.load_state_dict(state)
    return model


def load_baseline(config: GlowConfig, spec: str | Path, device: str | torch.device = "cpu") -> Glow:
    """The unconditional model ``spec`` (folder or ``pretrained:NAME``) to score beside a conditional model of
    ``config``: ``ValueError`` unless it models the same images (shape, n_bits) without classes or a context."""
    if not config.condition:
        raise ValueError("a baseline is compared with a conditional model (trained with --condition)")
    baseline = load_model(spec, device=device)
    other = baseline.config
    if other.condition or other.num_classes or (other.image_shape, other.n_bits) != (config.image_shape, config.n_bits):
        raise ValueError(
            f"the baseline {spec} must be an unconditional model of the same images ({config.image_shape}, "
            f"{config.n_bits} bits) without classes or a context"
        )
    return baseline


def load_pretrained(name: str, device: str | torch.device = "cpu") -> Glow:
    """The shipped model ``name`` (e.g. ``"mnist"``, ``"mnist-conditional"``) with its EMA weights, in eval mode.

    Raises ``ValueError`` naming the shipped models for an unknown name.
    """
    return load_model(pretrained_dir(name), device=device).eval()


def resolve_checkpoint(path: str | Path) -> Path:
    """A model directory (config.json + model.safetensors), a run directory holding ``model/``, or a
    shipped model, ``pretrained:NAME`` (an unknown name raises ``CheckpointError`` listing the shipped ones)."""
    if is_pretrained(path):
        try:
            return pretrained_dir(str(path))
        except ValueError as error:
            raise CheckpointError(str(error)) from None
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"{p} is not a checkpoint: not found (pass a model directory with config.json and "
            "model.safetensors, or a run directory)"
        )
    if (p / CONFIG_NAME).is_file():
        return p
    if (p / "model" / CONFIG_NAME).is_file():
        return p / "model"
    raise CheckpointError(f"{p} is not a checkpoint: expected config.json and model.safetensors in it or in {p}/model")


# --------------------------------------------------------------------------- training state
def rng_state() -> dict:
    """The global random states (torch, NumPy, Python) as tensors and strings (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": repr(random.getstate()),
    }


def set_rng_state(state: dict) -> None:
    """Restores what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate(ast.literal_eval(state["python"]))


RUN_FILES = ("train_config.json", "metrics.jsonl", "bpd.png", "model", "samples", "checkpoints")


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds anything a training run writes (not only its checkpoints)."""
    return any((Path(run_dir) / name).exists() for name in RUN_FILES)


def require_new_run(run_dir: str | Path) -> None:
    """``ValueError`` if ``run_dir`` already holds a training run (which only ``--resume`` may continue)."""
    if holds_run(run_dir):
        raise ValueError(
            f"{run_dir} already holds a training run: pass --resume to continue it, or choose another --out"
        )


def checkpoint_paths(run_dir: str | Path) -> list[Path]:
    """Training-state files of a run, oldest first."""
    return sorted((Path(run_dir) / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*.pt"))


def checkpoint_step(path: str | Path) -> int:
    """The step of a training-state file ``step_N.pt``."""
    return int(Path(path).stem[len(CHECKPOINT_PREFIX) :])


def save_training_state(run_dir: str | Path, state: dict, step: int, keep: int) -> Path:
    """Writes ``checkpoints/step_N.pt`` atomically and keeps it and the newest ``keep - 1`` older ones. Files of
    later steps (left by a run resumed from before them because they were unreadable) are not counted:
    pruning never removes a good checkpoint to keep a damaged one."""
    directory = Path(run_dir) / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{CHECKPOINT_PREFIX}{step:08d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    older = [p for p in checkpoint_paths(run_dir) if (number := _step_or_none(p)) is not None and number < step]
    for old in older[: max(len(older) - (keep - 1), 0)]:
        old.unlink(missing_ok=True)
    return path


def _step_or_none(path: Path) -> int | None:
    """The step of ``step_N.pt``, None for a name glowtorch does not write (``step_x.pt``)."""
    try:
        return checkpoint_step(path)
    except ValueError:
        return None


NUMBER = (int, float)
REQUIRED_STATE: dict[str, type | tuple[type, ...]] = {
    "model_config": dict, "train_config": dict, "model": dict, "ema": dict, "optimizer": dict,
    "step": int, "bad_steps": int, "elapsed": NUMBER, "rng": dict,
}  # fmt: skip
OPTIONAL_STATE: dict[str, type | tuple[type, ...]] = {
    "rollbacks": int, "lr_scale": NUMBER, "running_bpd": (*NUMBER, type(None)), "precision": str,
}  # fmt: skip
RNG_STATE: dict[str, type | tuple[type, ...]] = {
    "torch": torch.Tensor, "numpy_keys": torch.Tensor, "numpy_pos": int, "python": str,
}  # fmt: skip


def load_training_state(run_dir: str | Path, warn=None) -> dict:
    """The newest readable training state of ``run_dir``. A damaged newest file falls back to an older one,
    and ``warn`` (a callable taking a line, e.g. ``print``) is told which files were skipped and why."""
    errors = []
    for path in reversed(checkpoint_paths(run_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            check_training_state(state)
        except Exception as error:  # noqa: BLE001 - any unreadable file: try the previous one
            errors.append(f"{path.name}: {first_line(error)[:120]}")
            continue
        if errors and warn is not None:
            warn(f"warning: skipped unreadable training states ({'; '.join(errors)}); resuming from {path.name}")
        return state
    if errors:
        raise CheckpointError(f"no readable training state in {Path(run_dir) / 'checkpoints'} ({'; '.join(errors)})")
    raise CheckpointError(
        f"nothing to resume: {Path(run_dir) / 'checkpoints'} holds no training state; train without --resume"
    )


def check_training_state(state: object) -> None:
    """``ValueError`` unless ``state`` has the keys and types of a glowtorch training state (what ``Trainer.state``
    writes; files of earlier versions lack the optional keys)."""

    def check(values: object, required: dict, optional: dict, where: str) -> None:
        if not isinstance(values, dict):
            raise ValueError(f"not a glowtorch training state ({where} is a {type(values).__name__})")
        for key, kind in {**required, **optional}.items():
            if key not in values:
                if key in required:
                    raise ValueError(f"not a glowtorch training state (no {where}{key!r})")
                continue
            if not isinstance(values[key], kind) or isinstance(values[key], bool):
                raise ValueError(f"not a glowtorch training state ({where}{key!r} is a {type(values[key]).__name__})")

    check(state, REQUIRED_STATE, OPTIONAL_STATE, "")
    check(state["rng"], RNG_STATE, {}, "rng ")
    for key in ("model", "ema"):
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state[key].items()):
            raise ValueError(f"not a glowtorch training state ({key!r} holds something other than tensors)")
    optimizer = state["optimizer"]
    if not isinstance(optimizer.get("param_groups"), list) or not isinstance(optimizer.get("state"), dict):
        raise ValueError("not a glowtorch training state (the optimizer's state has no param_groups or state)")
    if state["step"] < 0 or not math.isfinite(state["elapsed"]):
        raise ValueError("not a glowtorch training state (a negative step or a non-finite elapsed time)")
