"""Presets shipped with glowtorch: ``NAME.json`` files holding a dataset, model and training options and
the paper's figure, for ``glowtorch train --preset NAME``."""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["load_preset", "preset_names"]


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
