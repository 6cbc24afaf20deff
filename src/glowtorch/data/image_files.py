"""Image files: opening them safely, decoding them to tensors, and listing an image folder's splits."""

from __future__ import annotations

import contextlib
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..files import first_line
from .dataset import DataError, resize_images

__all__ = [
    "ImageTooLarge",
    "first_image_size",
    "folder_listing",
    "image_array",
    "opened_image",
    "read_image",
    "read_image_files",
    "read_images",
]


def _chw(array: np.ndarray) -> Tensor:
    """A decoded ``(H, W)`` or ``(H, W, C)`` uint8 image as a ``(C, H, W)`` tensor."""
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
GRAY_MODES = ("1", "L", "LA", "I", "F", *SIXTEEN_BIT_MODES)


def image_array(image, channels: int | None = None, keep_alpha: bool = False) -> np.ndarray:
    """A PIL image's pixels as uint8 ``(H, W)`` (``channels`` 1), ``(H, W, 3)`` (3) or as decoded (None: 2-d for
    grayscale, 3-d for colour; RGBA/LA kept as ``(H, W, 4)`` with ``keep_alpha``), every mode scaled to 0..255:
    16-bit images (``I;16``; ``I`` with values in 0..65535) by 255/65535, floating-point images (``F``) with
    values in 0..1 by 255. Anything else (a float image of other values, negative integers) is refused by
    name with ``DataError``, never clipped into a wrong picture."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
                raise DataError(
                    f"a floating-point ({mode}) image with values outside 0..1 has no defined brightness: "
                    "save it as an 8- or 16-bit image"
                )
            scaled = values * 255.0
        else:
            if values.min() < 0 or values.max() > 65535:
                raise DataError(
                    f"a 32-bit integer ({mode}) image with values outside 0..65535: save it as 8 or 16 bits"
                )
            scaled = values * (255.0 / 65535.0)
        gray = np.floor(scaled + 0.5).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2) if channels == 3 else gray
    if channels == 1:
        return np.asarray(image.convert("L"), dtype=np.uint8)
    if channels == 3:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if keep_alpha and ("A" in mode or mode == "P"):
        return np.asarray(image.convert("RGBA"), dtype=np.uint8)
    target = "L" if mode in GRAY_MODES else "RGB"
    return np.asarray(image if mode == target else image.convert(target), dtype=np.uint8)


class ImageTooLarge(DataError):
    """An image file declares more pixels than PIL's decompression-bomb limit."""


@contextlib.contextmanager
def opened_image(path: str | Path):
    """``PIL.Image.open(path)``, with every way a file can fail to be an image raised as ``DataError``:
    unreadable, truncated or damaged data, and images that declare more pixels than PIL's decompression-
    bomb limit (the warning PIL gives below twice that limit counts too: such a file is not decoded)."""
    from PIL import Image, UnidentifiedImageError

    failures = (UnidentifiedImageError, OSError, ValueError, SyntaxError, zlib.error,
                Image.DecompressionBombError, Image.DecompressionBombWarning)  # fmt: skip
    if not Path(path).exists():
        raise DataError(f"{path} is not a readable image (no such file)")
    if not Path(path).is_file():  # a folder, a FIFO (which would block), a device: never opened
        raise DataError(f"{path} is not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        limit = Image.MAX_IMAGE_PIXELS
        raise ImageTooLarge(f"{path} declares more pixels than glowtorch decodes ({limit:,})") from None
    except failures as error:
        raise DataError(f"{path} is not a readable image ({first_line(error)})") from None


def read_image(path: Path, channels: int, size: int | None) -> Tensor | None:
    """One image file as ``(C, H, W)`` uint8 with ``channels`` channels (resized to ``size`` if given), or None
    when the file is not a readable image."""
    try:
        with opened_image(path) as image:
            array = image_array(image, channels)
    except DataError:
        return None
    tensor = _chw(array)
    return resize_images(tensor.unsqueeze(0), size)[0] if size else tensor


def read_images(paths: list[Path], channels: int, size: int | None, what: str) -> tuple[list[Tensor], list[int]]:
    """The readable images among ``paths`` (see ``read_image``) and their positions in ``paths``."""
    from tqdm import tqdm

    images, kept = [], []
    for index, path in enumerate(
        tqdm(paths, desc=f"reading {what}", unit="img", leave=False, disable=len(paths) < 2000)
    ):
        image = read_image(path, channels, size)
        if image is not None:
            images.append(image)
            kept.append(index)
    return images, kept


def read_image_files(paths: list[str | Path], image_shape: tuple[int, int, int]) -> Tensor:
    """Image files -> ``(N, C, H, W)`` uint8 for a model of ``image_shape``; a file of another size,
    a colour image for a grayscale model (or the reverse), or an unreadable file is refused."""
    channels, height, width = image_shape
    images = []
    for path in paths:
        with opened_image(path) as image:
            is_gray = image.mode in GRAY_MODES
            if is_gray != (channels == 1):
                kind = "grayscale" if is_gray else "colour"
                raise DataError(f"{path} is a {kind} image but the model expects {channels} channel(s)")
            if image.size != (width, height):
                raise DataError(f"{path} is {image.size[0]}x{image.size[1]} but the model expects {width}x{height}")
            array = image_array(image, channels)
        images.append(_chw(array))
    if not images:
        raise DataError("no images given")
    return torch.stack(images)


def first_image_size(files: list[Path], channels: int) -> tuple[int, int]:
    """``(H, W)`` of the first readable image among the first 50 ``files``; ``DataError`` if none is."""
    first = next((img for img in (read_image(p, channels, None) for p in files[:50]) if img is not None), None)
    if first is None:
        raise DataError(f"no readable images among the first files of {files[0].parent if files else 'the folder'}")
    return first.shape[1], first.shape[2]


def folder_listing(root: Path, train: bool) -> tuple[list[Path], Tensor | None, list[str] | None]:
    """The image folder's files of one split (sorted), each file's class (its first sub-folder's index)
    and the class names, or None without sub-folders. ``train/`` and ``test/`` sub-folders are the
    splits if present, otherwise every 10th file is held out for testing. The class names are those of
    both splits, so a class index means the same in each (a class with no file in one split keeps its
    place)."""
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    split_dir = root / ("train" if train else "test")
    has_splits = split_dir.is_dir()
    base = split_dir if has_splits else root
    files = _visible_files(base)
    if has_splits:
        other = root / ("test" if train else "train")
        class_dirs = sorted(
            _class_names(base, files) | (_class_names(other, _visible_files(other)) if other.is_dir() else set())
        )
    else:
        class_dirs = sorted(_class_names(base, files))
        files = [p for i, p in enumerate(files) if (i % 10 == 9) != train]
    if not class_dirs:
        return files, None, None
    index = {name: i for i, name in enumerate(class_dirs)}
    labels = torch.tensor([index.get(p.relative_to(base).parts[0], 0) for p in files], dtype=torch.int64)
    return files, labels, class_dirs


def _visible_files(folder: Path) -> list[Path]:
    """The files under ``folder`` (sorted), hidden ones left out."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _class_names(base: Path, files: list[Path]) -> set[str]:
    """The first sub-folders of ``base`` that hold any of ``files``."""
    return {p.parent.relative_to(base).parts[0] for p in files if p.parent != base}
