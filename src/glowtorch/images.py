"""Image output: PNG grids of uint8 image batches."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .files import atomic_write

__all__ = ["make_grid", "save_gif", "save_grid"]


MAX_GRID_PIXELS = 1 << 28  # 268 million: a 16384 x 16384 PNG


def grid_layout(n: int, columns: int | None) -> tuple[int, int]:
    """``(rows, columns)`` of a grid of ``n`` images: ``columns`` (default about the square root), never more
    than the images."""
    columns = max(min(columns or math.ceil(math.sqrt(n)), n), 1)
    return math.ceil(n / columns), columns


def make_grid(images: Tensor, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """``(N, C, H, W)`` uint8 -> one ``(rows*(H+p)+p, cols*(W+p)+p, C)`` uint8 array (C squeezed when 1)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) uint8 images, got {images.dtype} {tuple(images.shape)}")
    n, channels, height, width = images.shape
    rows, columns = grid_layout(n, columns)
    grid = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), np.uint8)
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    for index in range(n):
        row, col = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        grid[top : top + height, left : left + width] = array[index]
    return grid[:, :, 0] if channels == 1 else grid


def save_grid(images: Tensor, path: str | Path, columns: int | None = None, scale: int = 1, padding: int = 2) -> Path:
    """Writes ``images`` ``(N, C, H, W)`` uint8 as a PNG grid, each pixel ``scale`` x ``scale``;
    one image with ``padding=0`` is written as is."""
    from PIL import Image

    n, _, height, width = images.shape
    rows, columns = grid_layout(n, columns)
    pixels = (rows * (height + padding) + padding) * (columns * (width + padding) + padding) * scale * scale
    if pixels > MAX_GRID_PIXELS:
        raise ValueError(
            f"the PNG grid would have {pixels:,} pixels (at most {MAX_GRID_PIXELS:,}): ask for fewer images or a "
            "smaller --scale"
        )
    grid = make_grid(images, columns, padding)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
    return path


def save_gif(frames: Tensor, path: str | Path, duration_ms: int = 120, scale: int = 1, bounce: bool = True) -> Path:
    """Writes frames ``(N, C, H, W)`` uint8 as a looping animated GIF (played forth and back with ``bounce``)."""
    from PIL import Image

    arrays = [make_grid(frame.unsqueeze(0), 1, padding=0) for frame in frames]
    if scale > 1:
        arrays = [a.repeat(scale, axis=0).repeat(scale, axis=1) for a in arrays]
    if bounce and len(arrays) > 2:
        arrays = arrays + arrays[-2:0:-1]
    pictures = [Image.fromarray(a) for a in arrays]
    path = Path(path)
    atomic_write(
        path,
        lambda tmp: pictures[0].save(
            tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0
        ),
    )
    return path
