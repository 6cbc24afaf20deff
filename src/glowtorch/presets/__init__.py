"""Presets shipped with glowtorch: ``NAME.json`` files holding a dataset, model and training options and
the paper's figure, for ``glowtorch train --preset NAME``."""

from __future__ import annotations

import json
from importlib import resources
from typing import NamedTuple

__all__ = ["Settings", "load_preset", "preset_names", "preset_settings"]


def preset_names() -> list[str]:
    """The names of the shipped presets, sorted."""
    return sorted(p.name[: -len(".json")] for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> dict:
    """The preset ``name``: ``description``, ``dataset``, ``model`` and ``train`` options, ``paper_bpd``.

    Raises ``ValueError`` naming the shipped presets for an unknown name.
    """
    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text())


class Settings(NamedTuple):
    """A run's settings: its dataset, image size (None: the dataset's own), and the values of its
    ``GlowConfig`` and ``TrainConfig``."""

    dataset: str
    image_size: int | None
    model: dict
    train: dict


def preset_settings(
    name: str | None,
    dataset: str | None = None,
    image_size: int | None = None,
    model: dict | None = None,
    train: dict | None = None,
) -> Settings:
    """The preset ``name`` (or none) with the given values over its own: the dataset (default: the preset's,
    else "digits"), the image size, and the model and training values. A run with no limit of its own
    (epochs, steps or max_minutes) trains for 10 epochs."""
    preset = load_preset(name) if name else {}
    train_values = {**preset.get("train", {}), **(train or {})}
    if all(train_values.get(k) is None for k in ("epochs", "steps", "max_minutes")):
        train_values["epochs"] = 10
    return Settings(
        dataset=dataset or preset.get("dataset") or "digits",
        image_size=image_size or preset.get("image_size"),
        model={**preset.get("model", {}), **(model or {})},
        train=train_values,
    )
