"""A prepared image store: a dataset decoded once into flat uint8 arrays that every process memory-maps.

``glowtorch prepare`` writes, for each split, ``SPLIT/images.npy`` (``(N, C, H, W)`` uint8, opened with
``np.load(mmap_mode="r")``), ``SPLIT/labels.npy`` (int64) or ``SPLIT/attributes.npy`` (bool), and one
``manifest.json`` naming the source, shapes, counts and a checksum of the source listing. Training and
every command then read it with ``--dataset prepared --data-dir DIR``: start-up reads the manifest and
maps the files, so it does not grow with N, and the processes of a node share the page cache instead
of each holding the split.

The store is written in a new hidden folder beside ``DIR`` (``.DIR.partial-XXXXXXXX``, created exclusively)
and renamed to ``DIR`` when complete (manifest last), so an interrupted ``prepare`` leaves nothing that looks
like a store; running it again starts over in a new folder. Only that folder is ever removed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write, current_umask, disk_full
from .dataset import DataError, Dataset
from .image_files import first_image_size, folder_listing, read_image
from .sources import CELEBA_ATTRIBUTES_FILE, SOURCES, celeba_split, load_source

__all__ = ["FORMAT", "MANIFEST", "VERSION", "ArrayWriter", "open_store", "prepare_store"]

MANIFEST = "manifest.json"
FORMAT = "glowtorch prepared store"
VERSION = 1
SPLITS = ("train", "test")
CHUNK = 256  # images per task of a decoding worker
HEADER_BYTES = 192  # a .npy header with room for any (N, C, H, W) shape; a multiple of 64, as numpy aligns it


# --------------------------------------------------------------------------- .npy files written in place
def _npy_header(shape: tuple[int, ...], length: int) -> bytes:
    """A version 1.0 ``.npy`` header of exactly ``length`` bytes for a C-ordered uint8 array of ``shape``."""
    text = repr({"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    room = length - 10 - len(text) - 1
    if room < 0:
        raise ValueError("header too long")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", length - 10) + (text + " " * room + "\n").encode("latin1")


class ArrayWriter:
    """Appends uint8 images to a ``.npy`` file whose final count is at most ``capacity``."""

    def __init__(self, path: Path, capacity: int, image_shape: tuple[int, int, int]) -> None:
        self.path, self.image_shape, self.count = path, image_shape, 0
        header = _npy_header((capacity, *image_shape), HEADER_BYTES)
        self.header_length = len(header)
        self.file = open(path, "wb")
        self.file.write(header)

    def write(self, images: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
        self.count += len(images)

    def close(self) -> None:
        """Rewrites the header with the final count and syncs the file."""
        self.file.seek(0)
        self.file.write(_npy_header((self.count, *self.image_shape), self.header_length))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


# --------------------------------------------------------------------------- sources
def _listing_checksum(paths: list[Path], root: Path) -> str:
    """sha256 of the source files' relative paths, sizes and modification times."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode_chunk(task: tuple[list[str], int, int | None]) -> tuple[np.ndarray, list[int]]:
    """Worker: decodes image files to ``(k, C, S, S)`` uint8 and the positions that were readable."""
    paths, channels, size = task
    images, kept = [], []
    for index, path in enumerate(paths):
        image = read_image(Path(path), channels, size)
        if image is not None:
            images.append(image.numpy())
            kept.append(index)
    if not images:
        return np.zeros((0, channels, size or 1, size or 1), np.uint8), kept
    return np.stack(images), kept


def _worker_init() -> None:
    torch.set_num_threads(1)


def _pool(workers: int):
    """Decoding processes, started once for all splits ("spawn": no fork of a process that may hold
    torch's threads)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)


def _decoded(pool, paths: list[Path], channels: int, size: int, what: str) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Decodes ``paths`` in the ``pool``'s processes, in order, chunk by chunk, with a progress bar."""
    from tqdm import tqdm

    tasks = [([str(p) for p in paths[i : i + CHUNK]], channels, size) for i in range(0, len(paths), CHUNK)]
    with tqdm(total=len(paths), desc=f"decoding {what}", unit="img", dynamic_ncols=True) as bar:
        for start, (images, kept) in zip(range(0, len(paths), CHUNK), pool.map(_decode_chunk, tasks), strict=True):
            bar.update(min(CHUNK, len(paths) - start))
            yield images, [start + k for k in kept]


def _file_split(dataset: str, root: Path, train: bool) -> tuple[list[Path], dict]:
    """The image files of one split of a folder or CelebA, and what goes with each (labels, attributes)."""
    if dataset == "folder":
        files, labels, class_names = folder_listing(root, train)
        return files, {"labels": labels, "class_names": class_names}
    files, names, values = celeba_split(root / CELEBA_ATTRIBUTES_FILE, train)
    return [root / "img_align_celeba" / f for f in files], {"attributes": values, "attribute_names": names}


def _write_split(folder: Path, images: np.ndarray | None, extras: dict, writer: ArrayWriter | None = None) -> dict:
    """Writes one split's arrays (``images`` in memory, or already streamed through ``writer``)."""
    folder.mkdir(parents=True, exist_ok=True)
    if writer is None:
        writer = ArrayWriter(folder / "images.npy", len(images), tuple(images.shape[1:]))
        for start in range(0, len(images), 4096):
            writer.write(images[start : start + 4096])
    writer.close()
    entry: dict = {"count": writer.count, "shape": [writer.count, *writer.image_shape], "images": "images.npy"}
    for key in ("labels", "attributes"):
        if extras.get(key) is not None:
            values = extras[key]
            np.save(folder / f"{key}.npy", values.numpy() if isinstance(values, torch.Tensor) else values)
            entry[key] = f"{key}.npy"
    for key in ("class_names", "attribute_names"):
        if extras.get(key):
            entry[key] = list(extras[key])
    return entry


def prepare_store(
    dataset: str,
    data_dir: str | Path | None,
    out: str | Path,
    image_size: int | None = None,
    channels: int = 3,
    workers: int | None = None,
) -> dict:
    """Decodes ``dataset`` once into a prepared store at ``out``; returns its manifest.

    Image folders and CelebA are decoded in ``workers`` processes (default: all cores), centre-cropped
    and resized to ``image_size`` as training would; unreadable files are skipped and counted. Other
    datasets are read with their loader. A complete store of the same source listing at ``out`` is
    kept as it is; any other existing ``out`` is refused.
    """
    out = Path(out)
    if dataset == "prepared":
        raise DataError("the dataset is already a prepared store")
    root = Path(data_dir) if data_dir else None
    if dataset not in SOURCES:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(SOURCES)}")
    if root is not None and not root.exists():
        raise DataError(f"data directory {root} does not exist")
    decoded = dataset in ("folder", "celeba")
    if decoded and root is None:
        raise DataError(f"--data-dir is required to prepare {dataset}")
    listings = {}
    if decoded:
        listings = {split: _file_split(dataset, root, split == "train") for split in SPLITS}
        every = sorted(p for files, _ in listings.values() for p in files)
        checksum = _listing_checksum(every, root)
    else:
        checksum = None
    if (out / MANIFEST).is_file():
        manifest = json.loads((out / MANIFEST).read_text())
        if checksum is not None and manifest.get("source_checksum") == checksum:
            return manifest
        raise DataError(f"{out} already holds a prepared store: choose another --out, or delete it first")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} exists and is not a prepared store: choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    # A new folder of glowtorch's own (mkdtemp: a random name, created exclusively); only it is ever removed.
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    os.chmod(partial, 0o777 & ~current_umask())  # the mode of the user's other new folders, not mkdtemp's 0700
    splits: dict = {}
    pool = _pool(workers or os.cpu_count() or 1) if decoded else None
    try:
        for split in SPLITS:
            splits[split] = _prepare_split(dataset, root, split, partial, listings, pool, image_size, channels)
    except BaseException as error:  # nothing half-written stays behind: a full disk, bad data, Ctrl-C
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(error, OSError) and disk_full(error, partial.parent):
            raise OSError(errno.ENOSPC, f"cannot write the store {out}: the disk is full") from None
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "dataset": dataset,
        "source": str(root.resolve()) if root else None,
        "source_checksum": checksum,
        "image_size": splits["train"]["shape"][2],
        "channels": splits["train"]["shape"][1],
        "splits": splits,
    }
    text = json.dumps(manifest, indent=2) + "\n"
    try:
        atomic_write(partial / MANIFEST, lambda p: Path(p).write_text(text))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty (checked above)
    partial.rename(out)
    return manifest


def _prepare_split(
    dataset: str, root: Path | None, split: str, partial: Path, listings: dict, pool, image_size: int | None,
    channels: int,
) -> dict:  # fmt: skip
    """Writes one split of the store under ``partial``; returns its manifest entry."""
    decoded = pool is not None
    if decoded:
        files, extras = listings[split]
        if not files:
            raise DataError(f"no images found for the {split} split in {root}")
        size = image_size or (64 if dataset == "celeba" else min(first_image_size(files, channels)))
        writer = ArrayWriter(_mkdir(partial / split) / "images.npy", len(files), (channels, size, size))
        kept: list[int] = []
        for images, positions in _decoded(pool, files, channels, size, split):
            writer.write(images)
            kept += positions
        skipped = len(files) - len(kept)
        if not kept:
            raise DataError(f"no readable images found for the {split} split in {root}")
        if dataset == "celeba" and skipped:
            raise DataError(f"{skipped} CelebA images of the {split} split are missing or unreadable")
        index = torch.tensor(kept, dtype=torch.long)
        extras = {k: (v[index] if isinstance(v, torch.Tensor) else v) for k, v in extras.items()}
        entry = _write_split(partial / split, None, extras, writer)
        entry["skipped"] = skipped
    else:
        data = load_source(dataset, root, train=split == "train", image_size=image_size, channels=channels)
        extras = {
            "labels": data.labels,
            "class_names": data.class_names,
            "attributes": data.attributes,
            "attribute_names": data.attribute_names,
        }
        entry = _write_split(partial / split, data.images.numpy(), extras)
        entry["skipped"] = 0
    return entry


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- reading
def open_store(directory: str | Path, train: bool = True, image_size: int | None = None) -> Dataset:
    """One split of a prepared store as a ``Dataset`` whose images are memory-mapped (not read into memory).

    Checks the manifest against the files (a truncated or reshaped array, a missing split, another
    image size than ``image_size``) and raises ``DataError`` naming the file.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise DataError(f"{directory} is not a prepared store ({MANIFEST} missing): run glowtorch prepare first")
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError("not a glowtorch store manifest")
        split = "train" if train else "test"
        if split not in manifest["splits"]:
            raise DataError(f"{path} has no {split} split: prepare the store again")
        entry = manifest["splits"][split]
        shape = tuple(int(v) for v in entry["shape"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"{path} is not a valid manifest ({error}): prepare the store again") from None
    if image_size and shape[2:] != (image_size, image_size):
        raise DataError(
            f"{path}: the store holds {shape[3]}x{shape[2]} images, not {image_size}x{image_size}; prepare it "
            f"again with --image-size {image_size}"
        )
    images_path = directory / split / entry["images"]
    images = _mapped(images_path, shape)
    labels = attributes = None
    if entry.get("labels"):
        labels = torch.from_numpy(_small_array(directory / split / entry["labels"], (shape[0],)).astype(np.int64))
    if entry.get("attributes"):
        attributes = torch.from_numpy(_small_array(directory / split / entry["attributes"], None).astype(bool))
        if len(attributes) != shape[0]:
            raise DataError(f"{directory / split / entry['attributes']} does not match {path}: prepare again")
    return Dataset(images, labels, entry.get("class_names"), attributes, entry.get("attribute_names"))


def _mapped(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """``path`` memory-mapped read-only as a uint8 tensor of ``shape`` (checked against the file)."""
    if not path.is_file():
        raise DataError(f"{path} is missing: prepare the store again")
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path} is damaged or truncated ({error}): prepare the store again") from None
    if array.dtype != np.uint8 or array.shape != shape:
        raise DataError(f"{path} holds {array.dtype} {array.shape}, but the manifest says uint8 {shape}: prepare again")
    with warnings.catch_warnings():  # read-only on purpose: nothing writes to a dataset's images
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _small_array(path: Path, shape: tuple[int, ...] | None) -> np.ndarray:
    try:
        array = np.load(path)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path} is damaged or truncated ({error}): prepare the store again") from None
    if shape is not None and array.shape != shape:
        raise DataError(f"{path} holds {array.shape} values, but the manifest says {shape}: prepare the store again")
    return array
