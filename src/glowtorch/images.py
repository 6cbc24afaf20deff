"""Image output: PNG grids of uint8 image batches."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["make_grid", "save_grid"]


def make_grid(images: Tensor, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """``(N, C, H, W)`` uint8 -> one ``(rows*(H+p)+p, cols*(W+p)+p, C)`` uint8 array (C squeezed when 1)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) uint8 images, got {images.dtype} {tuple(images.shape)}")
    n, channels, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), np.uint8)
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    for index in range(n):
        row, col = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        grid[top : top + height, left : left + width] = array[index]
    return grid[:, :, 0] if channels == 1 else grid


def save_grid(images: Tensor, path: str | Path, columns: int | None = None, scale: int = 1) -> Path:
    """Writes ``images`` ``(N, C, H, W)`` uint8 as a PNG grid, each pixel ``scale`` x ``scale``."""
    from PIL import Image

    from .checkpoint import atomic_write

    grid = make_grid(images, columns)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
    return path
