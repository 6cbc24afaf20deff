"""Datasets as in-memory uint8 tensors: the embedded digits, MNIST, CIFAR-10, SVHN, CelebA, image folders.

Every loader returns a ``Dataset`` of ``(N, C, H, W)`` uint8 images and optional ``(N,)`` labels, so the
training loop never touches PIL or the disk. Known datasets whose files are missing are downloaded
to a cache directory when the network is reachable (checksums verified, written atomically); offline
the error names the files and where to put them.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import pickle
import struct
import tarfile
import urllib.request
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .files import first_line

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "epoch_order",
    "folder_listing",
    "load_dataset",
    "random_flip",
    "random_shift",
    "read_image_files",
    "resize_images",
    "step_generator",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


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


# --------------------------------------------------------------------------- downloads
@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    md5: str


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("GLOWTORCH_CACHE", Path.home() / ".cache" / "glowtorch"))


def fetch(files: list[RemoteFile], directory: Path, dataset: str, timeout: float = 20.0) -> None:
    """Downloads ``files`` into ``directory``; each is checked against its md5 before it is renamed into place."""
    directory.mkdir(parents=True, exist_ok=True)
    for remote in files:
        target = directory / remote.name
        if target.exists():
            continue
        partial = target.with_name(target.name + ".part")
        try:
            with urllib.request.urlopen(remote.url, timeout=timeout) as response, open(partial, "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
        except OSError as error:
            partial.unlink(missing_ok=True)
            names = ", ".join(f.name for f in files)
            raise DataError(
                f"{dataset} files are missing from {directory} and could not be downloaded ({error}): "
                f"put {names} there, or pass --data-dir to the folder that holds them"
            ) from None
        if _md5(partial) != remote.md5:
            partial.unlink()
            raise DataError(f"downloaded {remote.name} has the wrong checksum (corrupt download); run again")
        os.replace(partial, target)


# --------------------------------------------------------------------------- loaders
def load_digits_dataset(train: bool) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), scaled to 0..255; last 297 are the test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    part = slice(0, 1500) if train else slice(1500, None)
    return Dataset(images[part].contiguous(), labels[part].contiguous(), [str(i) for i in range(10)])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    except (OSError, EOFError, struct.error, zlib.error) as error:  # zlib.error: damaged deflate data
        raise DataError(f"{path} is not a readable IDX file ({first_line(error)})") from None
    if array.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {array.size} values")
    return array.reshape(shape)


MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}


def load_mnist(data_dir: Path | None, train: bool) -> Dataset:
    """MNIST from the four IDX files (gzipped or not) in ``data_dir``."""
    prefix = "train" if train else "t10k"
    directory = Path(data_dir) if data_dir else default_cache_dir() / "mnist"

    def find(stem: str) -> Path | None:
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
            if (directory / name).is_file():
                return directory / name
        return None

    stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    if any(find(s) is None for s in stems):
        fetch([RemoteFile(s + ".gz", MNIST_URL + s + ".gz", MNIST_FILES[s]) for s in MNIST_FILES], directory, "MNIST")
    images, labels = (_read_idx(find(s)) for s in stems)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"MNIST files in {directory} do not match: images {images.shape}, labels {labels.shape}")
    return Dataset(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        [str(i) for i in range(10)],
    )


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"


def load_cifar10(data_dir: Path | None, train: bool) -> Dataset:
    """CIFAR-10 from the python batches (``cifar-10-batches-py``, or a folder containing it)."""
    directory = Path(data_dir) if data_dir else default_cache_dir() / "cifar10"
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    if not all((directory / n).is_file() for n in names) and data_dir is None:
        fetch([RemoteFile("cifar-10-python.tar.gz", CIFAR_URL, CIFAR_MD5)], directory, "CIFAR-10")
        archive = directory / "cifar-10-python.tar.gz"
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(directory, filter="data")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise DataError(f"{archive} is not a readable CIFAR-10 archive ({first_line(error)})") from None
        directory = directory / "cifar-10-batches-py"
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 batches missing in {directory}: {', '.join(missing)}; point --data-dir at cifar-10-batches-py"
        )
    images, labels = [], []
    for name in names:
        try:
            with open(directory / name, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch[b"labels"])
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError, IndexError) as error:
            raise DataError(f"{directory / name} is not a CIFAR-10 python batch ({first_line(error)})") from None
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return Dataset(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64), classes)


SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_MD5 = {"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373", "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"}


def load_svhn(data_dir: Path | None, train: bool) -> Dataset:
    """SVHN cropped digits from ``train_32x32.mat`` / ``test_32x32.mat`` (label 10 means digit 0)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    directory = Path(data_dir) if data_dir else default_cache_dir() / "svhn"
    name = "train_32x32.mat" if train else "test_32x32.mat"
    if not (directory / name).is_file():
        fetch([RemoteFile(name, SVHN_URL + name, SVHN_MD5[name])], directory, "SVHN")
    try:
        mat = loadmat(directory / name)
        images = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)).astype(np.uint8)  # (H, W, C, N) -> (N, C, H, W)
        labels = mat["y"].reshape(-1).astype(np.int64) % 10
    except (OSError, ValueError, KeyError, TypeError, MatReadError, zlib.error) as error:
        raise DataError(f"{directory / name} is not an SVHN .mat file ({first_line(error)})") from None
    return Dataset(torch.from_numpy(images), torch.from_numpy(labels), [str(i) for i in range(10)])


def _chw(array: np.ndarray) -> Tensor:
    """A decoded ``(H, W)`` or ``(H, W, C)`` uint8 image as a ``(C, H, W)`` tensor."""
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)


@contextlib.contextmanager
def _opened_image(path: str | Path):
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


def _read_image(path: Path, channels: int, size: int | None) -> Tensor | None:
    try:
        with _opened_image(path) as image:
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except DataError:
        return None
    tensor = _chw(array)
    return resize_images(tensor.unsqueeze(0), size)[0] if size else tensor


def _read_images(paths: list[Path], channels: int, size: int | None, what: str) -> tuple[list[Tensor], list[int]]:
    from tqdm import tqdm

    images, kept = [], []
    for index, path in enumerate(
        tqdm(paths, desc=f"reading {what}", unit="img", leave=False, disable=len(paths) < 2000)
    ):
        image = _read_image(path, channels, size)
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
        with _opened_image(path) as image:
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


def load_image_folder(data_dir: Path | None, train: bool, channels: int = 3, size: int | None = None) -> Dataset:
    """Any folder of images. Sub-folders are classes (sorted names); ``train/`` and ``test/`` sub-folders,
    if present, are the splits, otherwise every 10th image (sorted paths) is held out for testing.
    Images are converted to ``channels`` (1 or 3), center-cropped and resized to ``size``; files that
    are not readable images are skipped and counted (a warning names how many)."""
    if data_dir is None:
        raise DataError("--data-dir is required for the image-folder dataset")
    files, all_labels, class_dirs = folder_listing(Path(data_dir), train)
    split_dir = Path(data_dir) / ("train" if train else "test")
    base = split_dir if split_dir.is_dir() else Path(data_dir)
    if size is None:
        first = next((img for img in (_read_image(p, channels, None) for p in files[:50]) if img is not None), None)
        if first is None:
            raise DataError(f"no readable images found in {base}")
        size = (first.shape[1], first.shape[2])
    images, kept = _read_images(files, channels, size, str(base))
    skipped = len(files) - len(images)
    if skipped:
        print(f"glowtorch: skipped {skipped} unreadable or non-image files in {base}")
    if not images:
        raise DataError(f"no readable images found in {base}")
    labels = None if all_labels is None else all_labels[torch.tensor(kept, dtype=torch.long)]
    return Dataset(torch.stack(images), labels, class_dirs)


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


CELEBA_ATTRIBUTES_FILE = "list_attr_celeba.txt"


def read_celeba_attributes(path: Path) -> tuple[list[str], list[str], Tensor]:
    """``list_attr_celeba.txt`` -> (file names, 40 attribute names, ``(N, 40)`` bool tensor)."""
    try:
        lines = path.read_text().splitlines()
        names = lines[1].split()
        files, values = [], []
        for line in lines[2:]:
            parts = line.split()
            if parts:
                files.append(parts[0])
                values.append([int(v) > 0 for v in parts[1 : 1 + len(names)]])
        return files, names, torch.tensor(values, dtype=torch.bool)
    except (OSError, IndexError, ValueError) as error:
        raise DataError(f"{path} is not a CelebA attribute file ({error})") from None


def load_celeba(data_dir: Path | None, train: bool, size: int = 64, limit: int | None = None) -> Dataset:
    """CelebA: ``img_align_celeba/`` + ``list_attr_celeba.txt``, center-cropped and resized to ``size``.
    The first 90% of images (file order) are the training split. The 40 binary attributes are
    ``attributes`` / ``attribute_names``; there are no class labels."""
    directory = Path(data_dir) if data_dir else default_cache_dir() / "celeba"
    attr_path, image_dir = directory / CELEBA_ATTRIBUTES_FILE, directory / "img_align_celeba"
    if not attr_path.is_file() or not image_dir.is_dir():
        raise DataError(
            f"CelebA needs {image_dir}/ and {attr_path} (download them from the CelebA site, "
            "mmlab.ie.cuhk.edu.hk/projects/CelebA.html); pass --data-dir to their folder"
        )
    files, names, values = read_celeba_attributes(attr_path)
    cut = int(0.9 * len(files))
    part = slice(0, cut) if train else slice(cut, None)
    files, values = files[part], values[part]
    if limit:
        files, values = files[:limit], values[:limit]
    images, _ = _read_images([image_dir / f for f in files], 3, size, "CelebA")
    if len(images) != len(files):
        raise DataError(f"{len(files) - len(images)} CelebA images listed in {attr_path} are missing or unreadable")
    return Dataset(torch.stack(images), attributes=values, attribute_names=names)


Loader = Callable[..., Dataset]
DATASETS: dict[str, Loader] = {
    "digits": lambda data_dir, train, **kw: load_digits_dataset(train),
    "mnist": lambda data_dir, train, **kw: load_mnist(data_dir, train),
    "cifar10": lambda data_dir, train, **kw: load_cifar10(data_dir, train),
    "svhn": lambda data_dir, train, **kw: load_svhn(data_dir, train),
    "celeba": lambda data_dir, train, image_size=None, **kw: load_celeba(data_dir, train, image_size or 64),
    "folder": lambda data_dir, train, image_size=None, channels=3, **kw: load_image_folder(
        data_dir, train, channels, image_size
    ),
    "prepared": lambda data_dir, train, image_size=None, **kw: _open_store(data_dir, train, image_size),
}


def _open_store(data_dir: Path | None, train: bool, image_size: int | None) -> Dataset:
    from .store import open_store

    if data_dir is None:
        raise DataError("--data-dir is required for a prepared store (the folder glowtorch prepare wrote)")
    return open_store(data_dir, train, image_size)


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    train: bool = True,
    image_size: int | None = None,
    channels: int = 3,
) -> Dataset:
    """Loads a dataset by name (see ``DATASETS``); ``image_size`` crops and resizes to a square."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is not None and not Path(data_dir).exists():
        raise DataError(f"data directory {data_dir} does not exist")
    dataset = DATASETS[name](Path(data_dir) if data_dir else None, train, image_size=image_size, channels=channels)
    if image_size and dataset.images.shape[2:] != (image_size, image_size):
        dataset.images = resize_images(dataset.images, image_size)
    return dataset


def load_dataset_for(
    image_shape: tuple[int, int, int], name: str, data_dir: str | Path | None = None, train: bool = False
) -> Dataset:
    """A dataset shaped for a model of ``image_shape`` (C, H, W): image folders and CelebA are resized to
    its size and read with its channel count; other data of another shape is refused."""
    channels, height, _ = image_shape
    if name == "prepared":  # as stored: a store of another size is refused, naming its manifest
        data = load_dataset(name, data_dir, train=train, image_size=height)
        if data.image_shape[0] != channels:
            raise DataError(f"{data_dir}/manifest.json: the store holds {data.image_shape[0]}-channel images, "
                            f"the model expects {channels}")  # fmt: skip
        return data
    resizable = name in ("folder", "celeba")
    data = load_dataset(name, data_dir, train=train, image_size=height if resizable else None, channels=channels)
    if data.image_shape != tuple(image_shape):
        raise DataError(
            f"{name} images are {data.image_shape} (C, H, W) but the model expects {tuple(image_shape)}; "
            "use data of the model's size and channel count"
        )
    return data
