"""A dataset in memory (or memory-mapped): uint8 images with their labels or attributes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DataError", "Dataset", "resize_images"]


class DataError(ValueError):
    """Data files are missing, malformed, or do not fit the model."""


@dataclass
class Dataset:
    """``images``: ``(N, C, H, W)`` uint8; ``labels``: ``(N,)`` int64 or None; ``class_names`` for labels;
    ``attributes``: ``(N, A)`` bool with ``attribute_names`` (CelebA) or None."""

    images: Tensor
    labels: Tensor | None = None
    class_names: list[str] | None = None
    attributes: Tensor | None = None
    attribute_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"images must be a (N, C, H, W) uint8 tensor, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if len(self.images) == 0:
            raise DataError("the dataset is empty")
        if self.labels is not None and self.labels.shape != (len(self.images),):
            raise DataError(f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def attribute_table(self) -> tuple[list[str], Tensor]:
        """(names, ``(N, A)`` bool): CelebA's attributes, or one attribute per class ("is class c")."""
        if self.attributes is not None:
            return list(self.attribute_names), self.attributes
        if self.labels is None:
            raise DataError("this dataset has neither labels nor attributes to compute directions from")
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        return names, self.labels[:, None] == torch.arange(len(names))[None, :]

    @property
    def num_classes(self) -> int:
        if self.labels is None:
            return 0
        return len(self.class_names) if self.class_names else int(self.labels.max()) + 1


# --------------------------------------------------------------------------- preprocessing
def resize_images(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Center-crop to a square and resize (antialiased bilinear): ``(N, C, H, W)`` uint8 -> ``(N, C, S, S)``."""
    height, width = (size, size) if isinstance(size, int) else size
    _, _, h, w = images.shape
    if (h, w) == (height, width):
        return images
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = images[:, :, top : top + side, left : left + side]
    out = []
    for chunk in square.split(512):
        resized = F.interpolate(
            chunk.float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False
        )
        out.append(resized.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)
