"""What the page takes in: drawings, uploads and arrays brought to the model's input, numbers checked,
and images enlarged for display. Bad input raises ``DemoError``, whose message the page shows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data import DataError, image_array, opened_image
from ..data.image_files import ImageTooLarge
from ..images import make_grid
from ..validation import MAX_SEED

__all__ = [
    "DISPLAY",
    "MAX_UPLOAD_PIXELS",
    "DemoError",
    "finite_number",
    "prepare_image",
    "seed_number",
    "show",
    "unit_number",
]

MAX_UPLOAD_PIXELS = 4096 * 4096
DISPLAY = 4  # each model pixel is shown as DISPLAY x DISPLAY screen pixels (nearest neighbour)


class DemoError(ValueError):
    """Input the page cannot use; its message is shown in the page."""


# --------------------------------------------------------------------------- input images
def _to_gray_on_black(array: np.ndarray) -> np.ndarray:
    """``(H, W)`` float in [0, 255]: a drawing or photo as white strokes on black, like MNIST. Transparent
    pixels count as background; a light background is inverted."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 4:  # RGBA: composite onto white (the pad's paper)
        alpha = array[..., 3:4].astype(np.float64) / 255.0
        array = array[..., :3] * alpha + 255.0 * (1.0 - alpha)
    if array.ndim == 3:
        array = array[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    gray = array.astype(np.float64)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return 255.0 - gray if np.median(border) > 127.5 else gray


def _digit_like(gray: np.ndarray, size: int) -> np.ndarray:
    """MNIST's normalization: the strokes' bounding box scaled to fit 20/28 of the side (aspect kept),
    then placed so that its centre of mass is the image's centre. ``(size, size)`` uint8."""
    from PIL import Image

    ink = gray > 0.1 * gray.max()
    rows, cols = np.nonzero(ink)
    crop = gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    box = max(1, round(size * 20 / 28))
    factor = box / max(crop.shape)
    height, width = max(1, round(crop.shape[0] * factor)), max(1, round(crop.shape[1] * factor))
    small = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((width, height), Image.Resampling.LANCZOS)
    small = np.asarray(small, dtype=np.float64)
    canvas = np.zeros((size + 2 * height, size + 2 * width))
    total = small.sum()
    cy = (small.sum(1) * np.arange(height)).sum() / total if total else height / 2
    cx = (small.sum(0) * np.arange(width)).sum() / total if total else width / 2
    top, left = round(height + size / 2 - cy), round(width + size / 2 - cx)
    canvas[top : top + height, left : left + width] = small
    return np.clip(canvas[height : height + size, width : width + size], 0, 255).round().astype(np.uint8)


def prepare_image(value: Any, image_shape: tuple[int, int, int]) -> tuple[Tensor, str]:
    """A drawing, upload or array as the model's input ``(C, H, W)`` uint8, and a note of what was done.

    ``value``: a file path, a PIL image, an ``(H, W[, C])`` array, or the drawing pad's dict (its
    ``composite``). An image already of the model's size and colour mode is taken as is, like a dataset
    image. Otherwise: grayscale models get MNIST's normalization (white on black, the strokes scaled into
    the central 20/28 and centred by mass); colour models a centre crop and resize. An empty drawing,
    a file that is not an image and an image over ``MAX_UPLOAD_PIXELS`` raise ``DemoError``.
    """
    from PIL import Image

    if isinstance(value, dict):
        value = value.get("composite")
    if value is None:
        raise DemoError("no image: draw a digit, upload an image or pick a test image")
    if isinstance(value, (str, Path)):
        try:
            with opened_image(value) as image:
                if image.width * image.height > MAX_UPLOAD_PIXELS:
                    raise DemoError(f"the image is {image.width}x{image.height}: upload one under 4096x4096 pixels")
                image.load()
                value = image.copy()
        except ImageTooLarge:
            raise DemoError("the image is too large: upload one under 4096x4096 pixels") from None
        except DataError:
            raise DemoError("the upload is not a readable image: upload a PNG or JPEG") from None
    if isinstance(value, Image.Image):
        try:
            value = image_array(value, keep_alpha=True)
        except DataError as error:
            raise DemoError(f"the upload cannot be used: {error}") from None
    array = np.asarray(value)
    if array.ndim not in (2, 3) or array.size == 0 or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise DemoError(f"expected an image, got an array of shape {array.shape}")
    if array.shape[0] * array.shape[1] > MAX_UPLOAD_PIXELS:
        raise DemoError(f"the image is {array.shape[1]}x{array.shape[0]}: use one under 4096x4096 pixels")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    channels, height, width = image_shape
    opaque = array.ndim == 2 or array.shape[2] == 3 or (array[..., 3] == 255).all()
    gray = array.ndim == 2 or (
        array.shape[2] >= 3 and (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    )
    if array.shape[:2] == (height, width) and opaque and (gray if channels == 1 else array.ndim == 3):
        plain = array if array.ndim == 2 else (array[..., 0] if channels == 1 else array[..., :3])
        tensor = torch.from_numpy(np.ascontiguousarray(plain))
        return (tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1)).contiguous(), "used as is"
    source = f"{array.shape[1]}x{array.shape[0]}"
    if channels == 1:
        strokes = _to_gray_on_black(array)
        if strokes.max() - strokes.min() < 16:
            raise DemoError("the drawing is empty: draw a digit (or upload an image with something on it)")
        digit = _digit_like(strokes, height) if height == width else None
        if digit is None:
            digit = np.asarray(Image.fromarray(strokes.astype(np.uint8)).resize((width, height)))
        return torch.from_numpy(digit.copy()).unsqueeze(0), f"{source} brought to {width}x{height} grayscale, centred"
    rgb = Image.fromarray(array if array.ndim == 2 else array[..., :3]).convert("RGB")
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    rgb = rgb.crop((left, top, left + side, top + side)).resize((width, height), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1), f"{source} centre-cropped to {width}x{height}"


def show(images: Tensor, columns: int | None = None) -> np.ndarray:
    """uint8 images ``(N, C, H, W)`` as one display array, each pixel enlarged ``DISPLAY`` times."""
    grid = make_grid(images.cpu(), columns, padding=1 if len(images) > 1 else 0)
    return grid.repeat(DISPLAY, axis=0).repeat(DISPLAY, axis=1)


def unit_number(value: Any, what: str) -> float:
    value = finite_number(value, what)
    if not 0.0 <= value <= 1.0:
        raise DemoError(f"{what} must be between 0 and 1, got {value:g}")
    return value


def seed_number(value: Any) -> int:
    """A seed from the page: a whole number from 0 to ``MAX_SEED`` (what ``torch.Generator`` takes)."""
    if isinstance(value, bool):
        number = -1
    elif isinstance(value, int):
        number = value
    else:
        real = finite_number(value, "seed")
        number = int(real) if real == int(real) else -1
    if not 0 <= number <= MAX_SEED:
        raise DemoError(f"the seed must be a whole number from 0 to {MAX_SEED}")
    return number


def finite_number(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{what} must be a number") from None
    if not math.isfinite(number):
        raise DemoError(f"{what} must be a finite number")
    return number
