"""Between uint8 images and the model's input space.

The model sees ``x = (k + u) / 2**n_bits - 0.5`` in [-0.5, 0.5), where ``k`` is the pixel value
reduced to ``n_bits`` (``k = pixel // 2**(8 - n_bits)``) and ``u`` is dequantization noise in [0, 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dequantize", "to_uint8"]


def dequantize(
    images: Tensor,
    n_bits: int = 8,
    noise: bool | Tensor = True,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """uint8 images ``(B, C, H, W)`` -> model inputs in [-0.5, 0.5).

    With ``noise`` the dequantization noise ``u`` is uniform in [0, 1) (drawn from ``generator``);
    without it ``u = 0.5``, the centre of each bin, so ``to_uint8`` gives the pixels back exactly.
    A tensor ``noise`` of the images' shape is ``u`` itself.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits must be between 1 and 8, got {n_bits}")
    bins = 2**n_bits
    k = torch.div(images, 2 ** (8 - n_bits), rounding_mode="floor").to(dtype)
    if isinstance(noise, Tensor):
        if noise.shape != images.shape:
            raise ValueError(f"noise must have the images' shape {tuple(images.shape)}, got {tuple(noise.shape)}")
        u = noise.to(device=images.device, dtype=dtype)
    elif noise:
        u = torch.rand(images.shape, generator=generator, dtype=dtype, device=images.device)
    else:
        u = torch.full_like(k, 0.5)
    return (k + u) / bins - 0.5


def to_uint8(x: Tensor, n_bits: int = 8) -> Tensor:
    """Model-space images -> uint8 ``(B, C, H, W)``: the bin of each value, scaled back to 0..255."""
    bins = 2**n_bits
    k = torch.floor((x.float() + 0.5) * bins).clamp(0, bins - 1)
    return (k * (256 // bins)).to(torch.uint8)
