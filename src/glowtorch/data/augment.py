"""The randomness of training data, derived from (seed, step): epoch orders, flips and shifts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["epoch_order", "random_flip", "random_shift", "step_generator"]


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator determined by (seed, step, stream): the randomness of one training step (or one block
    of evaluation noise), so that a resumed run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + stream) % (2**63))


def epoch_order(num_images: int, seed: int, epoch: int) -> Tensor:
    """The training images' order in ``epoch`` (a permutation determined by seed and epoch)."""
    return torch.randperm(num_images, generator=step_generator(seed, epoch, stream=1))


def random_flip(
    images: Tensor, generator: torch.Generator | None = None, rows: tuple[slice, int] | None = None
) -> Tensor:
    """Flips each image of ``(B, C, H, W)`` horizontally with probability 1/2. With ``rows=(part, total)``
    the draws are made for ``total`` images and ``part`` of them used: ``images`` is that part of a batch."""
    total = rows[1] if rows else images.shape[0]
    flip = torch.rand(total, generator=generator, device=images.device)[rows[0] if rows else slice(None)] < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def random_shift(
    images: Tensor, max_shift: int, generator: torch.Generator | None = None, rows: tuple[slice, int] | None = None
) -> Tensor:
    """Translates each image of ``(B, C, H, W)`` by its own random whole-pixel offset.

    Offsets are drawn uniformly from ``[-max_shift, max_shift]`` on each axis; pixels moved in from
    outside the frame are 0 (black). ``max_shift=0`` returns ``images`` unchanged. ``rows`` as in
    ``random_flip``.
    """
    if max_shift == 0:
        return images
    s = max_shift
    batch, _, height, width = images.shape
    total = rows[1] if rows else batch
    offsets = torch.randint(-s, s + 1, (total, 2), generator=generator, device=images.device)
    offsets = offsets[rows[0]] if rows else offsets
    padded = F.pad(images, (s, s, s, s)).permute(0, 2, 3, 1)  # (B, H + 2s, W + 2s, C)
    # content moves down/right by (dy, dx): output row r reads padded row r - dy + s
    rows = torch.arange(height, device=images.device) - offsets[:, :1] + s  # (B, H)
    cols = torch.arange(width, device=images.device) - offsets[:, 1:] + s  # (B, W)
    index = torch.arange(batch, device=images.device)[:, None, None]
    return padded[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
