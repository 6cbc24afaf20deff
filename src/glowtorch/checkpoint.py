"""Model checkpoints: ``config.json`` + ``model.safetensors`` in one directory (no pickle)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .model import Glow, GlowConfig

__all__ = ["CheckpointError", "atomic_write", "load_model", "save_model"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


def atomic_write(path: Path, write) -> None:
    """Calls ``write(temporary_path)``, fsyncs, then renames onto ``path``: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def load_config(directory: str | Path) -> GlowConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a checkpoint directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        return GlowConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} is not a valid glowtorch config ({error})") from None


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> Glow:
    """Loads a model saved by ``save_model``; its ActNorm layers keep their saved state."""
    directory = Path(directory)
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
