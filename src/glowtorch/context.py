"""Conditioning on a context tensor: what the context is, how it is made from images, and the encoder that
turns it into features for every level of the model.

A conditional Glow models ``p(x | c)``. The context ``c`` is a float tensor ``(B, C_c, h, w)``; a model's
``GlowConfig.condition`` names where it comes from:

- ``"lowres:F"``: the image itself average-pooled by ``F`` (super-resolution). Pixels are reduced to the
  model's ``n_bits``, averaged over each ``F x F`` block and rounded, so the context is a real
  low-resolution image of ``(C, H/F, W/F)`` pixels: one a user can save as a PNG and hand in again. In
  model space it is the centre of each pixel's bin, ``(k + 0.5) / 2**n_bits - 0.5``, like ``dequantize``
  without noise.
- ``"tensor:C,H,W"``: any context of that shape, made by the user's own code (e.g. a vector as
  ``C,1,1``). The model takes it as it is.

Inside the model (``ContextEncoder``) the context is turned into features at every level's resolution:
the context resized to that resolution, beside channels computed from it by a small convolutional network.
They enter every coupling network of the level (concatenated to the conditioning half), the split
prior of the level (concatenated to the kept half) and, at the top level, the top prior.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .preprocess import dequantize

__all__ = [
    "ContextEncoder",
    "condition_kind",
    "context_from_lowres",
    "context_shape",
    "enlarge",
    "lowres_images",
    "resize",
]

CONDITION_KINDS = ("lowres", "tensor")


def _parse(condition: str) -> tuple[str, str]:
    kind, _, value = condition.partition(":")
    if kind not in CONDITION_KINDS or not value:
        raise ValueError(
            f"condition must be 'lowres:F' (the image average-pooled by F) or 'tensor:C,H,W' (a context of "
            f"that shape), got {condition!r}"
        )
    return kind, value


def condition_kind(condition: str) -> str:
    """``"lowres"``, ``"tensor"``, or ``""`` for an unconditional model (``condition=""``)."""
    return _parse(condition)[0] if condition else ""


def lowres_factor(condition: str, what: str = "this") -> int:
    """``F`` of ``"lowres:F"``; for any other condition (or none) a ``ValueError`` saying that ``what`` needs a
    model trained with ``--condition lowres:F``."""
    if condition_kind(condition) != "lowres":
        raise ValueError(f"{what} needs a model trained with --condition lowres:F")
    return int(_parse(condition)[1])


def context_shape(condition: str, image_shape: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """``(C_c, h, w)`` of the context of ``condition`` for images of ``image_shape``; None without one.

    Raises ``ValueError`` for a malformed condition or a factor that does not divide the image size."""
    if not condition:
        return None
    kind, value = _parse(condition)
    try:
        numbers = tuple(int(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if kind == "lowres":
        channels, height, width = image_shape
        if len(numbers) != 1 or numbers[0] < 2:
            raise ValueError(f"condition 'lowres:F' needs a whole factor F >= 2, got {condition!r}")
        factor = numbers[0]
        if height % factor or width % factor:
            raise ValueError(f"condition {condition!r}: the image size {height}x{width} is not divisible by {factor}")
        return channels, height // factor, width // factor
    if len(numbers) != 3 or min(numbers) < 1:
        raise ValueError(f"condition 'tensor:C,H,W' needs three positive sizes, got {condition!r}")
    return numbers  # type: ignore[return-value]


def lowres_images(images: Tensor, factor: int, n_bits: int = 8) -> Tensor:
    """uint8 images ``(B, C, H, W)`` -> their low-resolution versions, uint8 ``(B, C, H/F, W/F)``: pixels reduced
    to ``n_bits``, averaged over each ``factor x factor`` block, rounded half up, and scaled back to 0..255
    as ``to_uint8`` does (so ``context_from_lowres`` reads them back to the same bins)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 images (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
    step = 2 ** (8 - n_bits)
    k = torch.div(images, step, rounding_mode="floor").to(torch.float64)
    mean = F.avg_pool2d(k, factor)
    rounded = torch.floor(mean + 0.5)  # at most 2**n_bits - 1, as the mean of levels is
    return (rounded * step).to(torch.uint8)


def context_from_lowres(lowres: Tensor, n_bits: int = 8, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 low-resolution images ``(B, C, h, w)`` -> the model-space context, the centre of each pixel's bin
    (``dequantize`` without noise)."""
    return dequantize(lowres, n_bits, noise=False, dtype=dtype)


def enlarge(lowres: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 low-resolution images ``(B, C, h, w)`` shown at ``size``, each pixel a block (nearest neighbour)."""
    return F.interpolate(lowres.float(), size=tuple(size), mode="nearest").to(torch.uint8)


def resize(t: Tensor, size: tuple[int, int]) -> Tensor:
    """``t`` ``(B, C, h, w)`` at ``size``: bilinear up, area-averaged down (each axis as it needs)."""
    if tuple(t.shape[2:]) == tuple(size):
        return t
    if size[0] >= t.shape[2] and size[1] >= t.shape[3]:
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    if size[0] <= t.shape[2] and size[1] <= t.shape[3]:
        return F.adaptive_avg_pool2d(t, size)
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)


class ContextEncoder(nn.Module):
    """Context ``(B, C_c, h, w)`` -> one feature map per level, ``(B, C_c + features, H_l, W_l)``.

    A trunk (conv3x3 -> ReLU -> conv3x3 -> ReLU, ``features`` wide) runs at the context's resolution; for
    each level its output is resized to the level's resolution and passed through a conv3x3 -> ReLU of its
    own. The context itself, resized, stands beside those channels, so the flow sees it unchanged from the
    first step of training (the learned channels start random, the flow's use of both starts at zero).
    """

    def __init__(self, context_channels: int, features: int, level_sizes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.level_sizes = [tuple(size) for size in level_sizes]
        self.trunk = nn.Sequential(
            nn.Conv2d(context_channels, features, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(features, features, 3, padding=1),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Conv2d(features, features, 3, padding=1) for _ in level_sizes)
        self.out_channels = context_channels + features

    def forward(self, context: Tensor) -> list[Tensor]:
        trunk = self.trunk(context)
        return [
            torch.cat([resize(context, size), F.relu(head(resize(trunk, size)))], 1)
            for size, head in zip(self.level_sizes, self.heads, strict=True)
        ]
