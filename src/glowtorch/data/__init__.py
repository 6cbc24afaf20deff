"""Datasets: ``load_dataset`` reads any of ``DATASETS`` by name, from its original files (``sources``) or
from a prepared, memory-mapped store (``store``). Modules from the bottom up: ``dataset`` (the ``Dataset``
and resizing), ``augment`` (the per-step randomness), ``image_files`` (decoding image files), ``sources``,
``store`` and ``load``."""

from .augment import epoch_order, random_flip, random_shift, step_generator
from .dataset import DataError, Dataset, resize_images
from .image_files import folder_listing, image_array, opened_image, read_image, read_image_files
from .load import DATASETS, load_dataset, load_dataset_for
from .sources import SOURCES, read_celeba_attributes
from .store import open_store, prepare_store

__all__ = [
    "DATASETS",
    "SOURCES",
    "DataError",
    "Dataset",
    "epoch_order",
    "folder_listing",
    "load_dataset",
    "load_dataset_for",
    "open_store",
    "image_array",
    "opened_image",
    "prepare_store",
    "random_flip",
    "random_shift",
    "read_celeba_attributes",
    "read_image",
    "read_image_files",
    "resize_images",
    "step_generator",
]
