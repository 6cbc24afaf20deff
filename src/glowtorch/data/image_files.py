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

__all__ = ["first_image_size", "folder_listing", "opened_image", "read_image", "read_image_files", "read_images"]


def _chw(array: np.ndarray) -> Tensor:
    """A decoded ``(H, W)`` or ``(H, W, C)`` uint8 image as a ``(C, H, W)`` tensor."""
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)


@contextlib.contextmanager
def opened_image(path: str | Path):
    """``PIL.Image.open(path)``, with every way a file can fail to be an image raised as ``DataError``:
    unreadable, truncated or damaged data, and images that declare more pixels than PIL's decompression-
    bomb limit (the warning PIL gives below twice that limit counts too: such a file is not decoded)."""
    from PIL import Image, UnidentifiedImageError

    failures = (UnidentifiedImageError, OSError, ValueError, SyntaxError, zlib.error,
                Image.DecompressionBombError, Image.DecompressionBombWarning)  # fmt: skip
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except DataError:
        raise
    except failures as error:
        raise DataError(f"{path} is not a readable image ({first_line(error)})") from None


def read_image(path: Path, channels: int, size: int | None) -> Tensor | None:
    """One image file as ``(C, H, W)`` uint8 with ``channels`` channels (resized to ``size`` if given), or None
    when the file is not a readable image."""
    try:
        with opened_image(path) as image:
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
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
            is_gray = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            if is_gray != (channels == 1):
                kind = "grayscale" if is_gray else "colour"
                raise DataError(f"{path} is a {kind} image but the model expects {channels} channel(s)")
            if image.size != (width, height):
                raise DataError(f"{path} is {image.size[0]}x{image.size[1]} but the model expects {width}x{height}")
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
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
    splits if present, otherwise every 10th file is held out for testing."""
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    split_dir = root / ("train" if train else "test")
    has_splits = split_dir.is_dir()
    base = split_dir if has_splits else root
    files = sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not has_splits:
        files = [p for i, p in enumerate(files) if (i % 10 == 9) != train]
    class_dirs = sorted({p.parent.relative_to(base).parts[0] for p in files if p.parent != base})
    if not class_dirs:
        return files, None, None
    index = {name: i for i, name in enumerate(class_dirs)}
    labels = torch.tensor([index.get(p.relative_to(base).parts[0], 0) for p in files], dtype=torch.int64)
    return files, labels, class_dirs
