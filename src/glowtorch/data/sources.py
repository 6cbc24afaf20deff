"""The datasets glowtorch reads from their original files (the embedded digits, MNIST, CIFAR-10, SVHN,
CelebA and any image folder): ``SOURCES`` names their loaders and ``load_source`` calls one."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import tarfile
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..files import exclusive_temp, first_line
from .dataset import DataError, Dataset, resize_images
from .image_files import first_image_size, folder_listing, read_images

__all__ = ["CELEBA_ATTRIBUTES_FILE", "SOURCES", "celeba_split", "load_source", "read_celeba_attributes"]


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
        partial = exclusive_temp(target)  # a new file of glowtorch's own, never one planted there
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


class CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR-10's python batches and nothing else: a pickle may name only the NumPy functions that
    rebuild an array (``_reconstruct``, ``_frombuffer``, ``ndarray``, ``dtype``); any other global
    (``os.system``, ``eval``, a class of any module) is refused before it is looked up, so no code in a data
    folder ever runs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol 2 writes bytes read back as latin-1 strings
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a CIFAR-10 batch holds only arrays and lists")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """``(images (N, 3, 32, 32) uint8, labels)`` of one CIFAR-10 python batch, read with ``CifarUnpickler``;
    ``DataError`` for anything that is not such a batch."""
    try:
        with open(path, "rb") as f:
            batch = CifarUnpickler(f, encoding="bytes").load()
        if not isinstance(batch, dict):
            raise ValueError(f"holds a {type(batch).__name__}, not a dict")
        data, labels = batch[b"data"], batch[b"labels"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError("its data is not an (N, 3072) array of bytes")
        if not isinstance(labels, list) or len(labels) != len(data):
            raise ValueError("its labels are not one list entry per image")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 10 for v in labels):
            raise ValueError("its labels are not classes 0 to 9")
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError, IndexError,
            AttributeError, MemoryError) as error:  # fmt: skip
        raise DataError(f"{path} is not a CIFAR-10 python batch ({first_line(error)})") from None
    return data.reshape(-1, 3, 32, 32), list(labels)


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
        data, batch_labels = read_cifar_batch(directory / name)
        images.append(data)
        labels.extend(batch_labels)
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
        size = first_image_size(files, channels)
    images, kept = read_images(files, channels, size, str(base))
    skipped = len(files) - len(images)
    if skipped:
        print(f"glowtorch: skipped {skipped} unreadable or non-image files in {base}")
    if not images:
        raise DataError(f"no readable images found in {base}")
    labels = None if all_labels is None else all_labels[torch.tensor(kept, dtype=torch.long)]
    return Dataset(torch.stack(images), labels, class_dirs)


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


def celeba_split(path: Path, train: bool) -> tuple[list[str], list[str], Tensor]:
    """One split of ``list_attr_celeba.txt`` (as ``read_celeba_attributes``): the first 90% of the images
    (file order) are the training split, the rest the test split."""
    files, names, values = read_celeba_attributes(path)
    cut = int(0.9 * len(files))
    part = slice(0, cut) if train else slice(cut, None)
    return files[part], names, values[part]


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
    files, names, values = celeba_split(attr_path, train)
    if limit:
        files, values = files[:limit], values[:limit]
    images, _ = read_images([image_dir / f for f in files], 3, size, "CelebA")
    if len(images) != len(files):
        raise DataError(f"{len(files) - len(images)} CelebA images listed in {attr_path} are missing or unreadable")
    return Dataset(torch.stack(images), attributes=values, attribute_names=names)


Loader = Callable[..., Dataset]
SOURCES: dict[str, Loader] = {
    "digits": lambda data_dir, train, **kw: load_digits_dataset(train),
    "mnist": lambda data_dir, train, **kw: load_mnist(data_dir, train),
    "cifar10": lambda data_dir, train, **kw: load_cifar10(data_dir, train),
    "svhn": lambda data_dir, train, **kw: load_svhn(data_dir, train),
    "celeba": lambda data_dir, train, image_size=None, **kw: load_celeba(data_dir, train, image_size or 64),
    "folder": lambda data_dir, train, image_size=None, channels=3, **kw: load_image_folder(
        data_dir, train, channels, image_size
    ),
}


def load_source(
    name: str, data_dir: Path | None, train: bool, image_size: int | None = None, channels: int = 3
) -> Dataset:
    """The dataset ``name`` of ``SOURCES`` read from its files in ``data_dir``; ``image_size`` crops and resizes
    to a square."""
    dataset = SOURCES[name](data_dir, train, image_size=image_size, channels=channels)
    if image_size and dataset.images.shape[2:] != (image_size, image_size):
        dataset.images = resize_images(dataset.images, image_size)
    return dataset
