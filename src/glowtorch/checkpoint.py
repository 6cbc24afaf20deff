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
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .files import atomic_write, first_line
from .model import Glow, GlowConfig
from .pretrained import is_pretrained, pretrained_dir

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
    """Writes ``checkpoints/step_N.pt`` atomically and keeps the newest ``keep`` of them."""
    directory = Path(run_dir) / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{CHECKPOINT_PREFIX}{step:08d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    for old in checkpoint_paths(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_training_state(run_dir: str | Path) -> dict:
    """The newest readable training state of ``run_dir`` (a corrupt newest file falls back to an older one)."""
    errors = []
    for path in reversed(checkpoint_paths(run_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("not a glowtorch training state")
            return state
        except Exception as error:  # noqa: BLE001 - any unreadable file: try the previous one
            errors.append(f"{path.name}: {first_line(error)[:120]}")
    if errors:
        raise CheckpointError(f"no readable training state in {Path(run_dir) / 'checkpoints'} ({'; '.join(errors)})")
    raise CheckpointError(
        f"nothing to resume: {Path(run_dir) / 'checkpoints'} holds no training state; train without --resume"
    )
