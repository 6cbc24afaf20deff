"""Pretrained models shipped inside the package: one folder per model holding ``config.json`` and
``model.safetensors`` (the EMA weights) and ``card.json`` (what was measured and how it was trained).

This package is the models' data and their names; :func:`glowtorch.load_pretrained` loads one. Commands
and :func:`glowtorch.load_model` take a shipped model as ``pretrained:NAME``. The prefix keeps the
two spellings apart: ``pretrained:mnist`` is always the shipped model, ``mnist`` or ``./mnist`` a local folder.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

__all__ = ["PREFIX", "is_pretrained", "pretrained_card", "pretrained_dir", "pretrained_names"]

PREFIX = "pretrained:"


def pretrained_names() -> list[str]:
    """The names of the shipped models, sorted."""
    root = resources.files(__name__)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.joinpath("config.json").is_file())


def is_pretrained(spec: str | Path) -> bool:
    """Whether ``spec`` names a shipped model (``pretrained:NAME``) rather than a folder."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def pretrained_dir(name: str) -> Path:
    """The folder of the shipped model ``name`` (with or without the ``pretrained:`` prefix).

    Raises ``ValueError`` naming the shipped models for an unknown name.
    """
    name = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    names = pretrained_names()
    if name not in names:
        raise ValueError(f"unknown pretrained model {name!r}; the shipped ones are: {', '.join(names) or 'none'}")
    return Path(str(resources.files(__name__).joinpath(name)))


def pretrained_card(name: str) -> dict:
    """What ``card.json`` records of the shipped model ``name``: its test bits/dim (mean of several
    dequantization draws, median and worst image), parameter count, training command and CPU time."""
    return json.loads((pretrained_dir(name) / "card.json").read_text())
