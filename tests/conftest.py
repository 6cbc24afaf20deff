"""Shared helpers: tiny models and parameter randomization (a fresh Glow is close to the identity)."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch

from glowtorch import ComputeConfig, Glow, GlowConfig
from glowtorch.layers import ActNorm

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (``-n auto``) each worker, and every process it starts, computes on one thread:
    # the workers share the cores instead of fighting over them.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@torch.no_grad()
def randomize(module: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Adds noise to every parameter and marks ActNorms initialized, so no layer is the identity."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
        parameter.add_(scale * noise.to(parameter.dtype))
    for sub in module.modules():
        if isinstance(sub, ActNorm):
            sub.initialized.fill_(True)
    return module


def tiny_config(**overrides) -> GlowConfig:
    values = dict(image_shape=(2, 4, 4), levels=2, depth=2, hidden_channels=8)
    values.update(overrides)
    return GlowConfig(**values)


COMPUTE_FIELDS = {f.name for f in dataclasses.fields(ComputeConfig)}


def random_model(seed: int = 0, scale: float = 0.2, **overrides) -> Glow:
    """A tiny float64 model with random weights; ``overrides`` may name GlowConfig and ComputeConfig fields."""
    compute = ComputeConfig(**{k: overrides.pop(k) for k in list(overrides) if k in COMPUTE_FIELDS})
    torch.manual_seed(seed)
    return randomize(Glow(tiny_config(**overrides), compute).double(), scale=scale, seed=seed)


def images(batch: int, shape=(2, 4, 4), seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *shape, generator=generator, dtype=dtype) - 0.5


@pytest.fixture(autouse=True)
def float32_wins_the_precision_probe(monkeypatch):
    """Tests run the same on every machine: precision "auto" sees float32 as the faster (tests of the
    probe itself set their own rates). Subprocess tests pass --precision float32."""
    import glowtorch.precision

    rates = glowtorch.precision.ProbeRates(100.0, 50.0, 0.5)
    monkeypatch.setattr(glowtorch.precision, "probe_rates", lambda *args, **kwargs: rates)


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def grid_cells(path, rows: int, columns: int, side: int, scale: int = 1, padding: int = 2):
    """The cells of a PNG grid written by ``save_grid`` as ``(rows * columns, side, side[, C])`` arrays, after
    checking the grid's exact size and that its padding is black."""
    import numpy as np
    from PIL import Image

    picture = np.asarray(Image.open(path))
    step = side + padding
    assert picture.shape[:2] == ((rows * step + padding) * scale, (columns * step + padding) * scale)
    picture = picture[::scale, ::scale]
    cells, background = [], picture.copy()
    for row in range(rows):
        for col in range(columns):
            top, left = padding + row * step, padding + col * step
            cells.append(picture[top : top + side, left : left + side].copy())
            background[top : top + side, left : left + side] = 0
    assert not background.any(), "the padding is black"
    return np.stack(cells)


def assert_distinct_cells(cells) -> None:
    """No cell is blank (all padding-black) and no two cells are the same picture."""
    flat = cells.reshape(len(cells), -1)
    assert (flat.max(1) > 0).all(), "a cell is blank"
    assert len({row.tobytes() for row in flat}) == len(flat), "two cells are the same picture"


def free_port() -> int:
    """A TCP port free on this machine now (for a process group's rendezvous or a local server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
