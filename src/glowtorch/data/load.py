"""Every dataset by name: the original sources and the prepared stores made from them."""

from __future__ import annotations

from pathlib import Path

from .dataset import DataError, Dataset
from .sources import SOURCES, load_source
from .store import open_store

__all__ = ["DATASETS", "load_dataset", "load_dataset_for"]

DATASETS: tuple[str, ...] = (*SOURCES, "prepared")


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
    data_dir = Path(data_dir) if data_dir else None
    if name == "prepared":
        if data_dir is None:
            raise DataError("--data-dir is required for a prepared store (the folder glowtorch prepare wrote)")
        return open_store(data_dir, train, image_size)
    return load_source(name, data_dir, train, image_size, channels)


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
