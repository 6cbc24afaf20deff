"""A model's reference data, computed once and kept beside its weights: the test set's per-image bits/dim
with a few example test images (``test_scores.safetensors``), and class or attribute directions
(``directions.safetensors``). Shipped models carry them; ``glowtorch demo --dataset`` computes them for
others into the model folder's ``demo/``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .data import DataError, load_dataset_for
from .evaluate import score_images
from .latent import attribute_directions, load_latents, save_latents, write_directions
from .model import Glow

__all__ = [
    "DIRECTIONS_FILE",
    "SCORES_FILE",
    "build_reference",
    "find_reference_files",
    "read_test_scores",
    "write_test_scores",
]

SCORES_FILE = "test_scores.safetensors"
DIRECTIONS_FILE = "directions.safetensors"


def find_reference_files(folder: Path) -> tuple[Path | None, Path | None]:
    """The scores and directions files of the model in ``folder`` (beside the weights, or in ``demo/``)."""
    found = [folder, folder / "demo"]
    scores = next((p / SCORES_FILE for p in found if (p / SCORES_FILE).is_file()), None)
    directions = next((p / DIRECTIONS_FILE for p in found if (p / DIRECTIONS_FILE).is_file()), None)
    return scores, directions


def write_test_scores(path: Path, scores: Tensor, examples: Tensor, source: str) -> Path:
    """Per-image test bits/dim ``(N,)`` and example test images ``(M, C, H, W)`` uint8 in one safetensors file."""
    return save_latents(
        path, {"bits_per_dim": scores.float(), "examples": examples}, {"glowtorch": "test scores", "source": source}
    )


def read_test_scores(path: Path, image_shape: tuple[int, int, int] | None = None) -> tuple[Tensor, Tensor]:
    """The per-image bits/dim ``(N,)`` and example images ``(M, C, H, W)`` uint8 of a file written by
    ``write_test_scores``, checked (the file may come from anyone): ``ValueError`` for missing tensors,
    other shapes or types (examples of another ``image_shape``, where given), no scores, or NaN scores."""
    tensors, _ = load_latents(path)
    scores, examples = tensors.get("bits_per_dim"), tensors.get("examples")
    if scores is None or examples is None:
        raise ValueError(f"{path} is not a test-scores file: it needs bits_per_dim and examples")
    if scores.dim() != 1 or not len(scores) or not scores.is_floating_point() or scores.isnan().any():
        raise ValueError(f"{path}: bits_per_dim must be one number (not NaN) per test image")
    shape_ok = examples.dim() == 4 and (image_shape is None or tuple(examples.shape[1:]) == tuple(image_shape))
    if examples.dtype != torch.uint8 or not shape_ok:
        raise ValueError(f"{path}: the examples must be uint8 images of shape (M, *{image_shape or '(C, H, W)'}), "
                         f"got {examples.dtype} {tuple(examples.shape)}")  # fmt: skip
    return scores, examples


def build_reference(
    model: Glow, folder: Path, dataset: str, data_dir: str | None, progress: bool = True, scores: Tensor | None = None
) -> tuple[Path, Path | None]:
    """Scores ``dataset``'s test split (unless its ``scores`` are given) and computes class (or attribute)
    directions from its training split, once; written to ``folder``."""
    test = load_dataset_for(model.config.image_shape, dataset, data_dir, train=False)
    labels = test.labels if model.config.num_classes else None
    if scores is None:
        scores = score_images(model, test.images, labels, progress=progress).bits_per_dim
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:32]
    folder.mkdir(parents=True, exist_ok=True)
    scores_path = write_test_scores(folder / SCORES_FILE, scores, test.images[order].clone(), f"{dataset} test split")
    train = load_dataset_for(model.config.image_shape, dataset, data_dir, train=True)
    try:
        names, table = train.attribute_table()
    except DataError:  # neither labels nor attributes: no edit sliders
        return scores_path, None
    limit = min(len(train), 10000)
    images, table = train.images[:limit], table[:limit]
    labels = train.labels[:limit] if model.config.num_classes and train.labels is not None else None
    directions = attribute_directions(model, images, table.bool(), labels)
    return scores_path, write_directions(folder / DIRECTIONS_FILE, model, directions, names, dataset)
