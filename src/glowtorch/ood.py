"""Out-of-distribution detection by likelihood, with the scores that were found to work where raw
likelihood fails.

Every score is "higher = more out of distribution", computed per image from the float32 bits/dim of
``evaluate.score_images``:

- ``bpd``: bits/dim, ``-log2 p(x) / D``. Assumes in-distribution images are the likely ones; fails on
  simple images (constant, smooth) that a flow finds more likely than real data (Nalisnick et al. 2019).
- ``typicality``: ``|bpd(x) - typical|``, the distance from the training set's mean bits/dim (Nalisnick
  et al. 2019, "Detecting out-of-distribution inputs to deep generative models using typicality"). Assumes
  in-distribution data lies in the typical set, so images far *more* likely than usual are suspect too.
  ``typicality_batch`` is their batch test: ``|mean bpd of a batch - typical|``, for batches of
  ``batch_size`` images all from one set (more power, but it scores batches, not images).
- ``complexity``: ``bpd(x) - L(x)``, where ``L(x)`` is a lossless compressor's bits/dim (PNG, level 9):
  Serrà et al. 2020, "Input complexity and out-of-distribution detection with likelihood-based generative
  models". Assumes the compressor measures the complexity that biases likelihood, so the difference
  leaves how much better (or worse) the model explains the image than a generic compressor does.
- ``likelihood_ratio``: ``bpd(x) - bpd_background(x)`` with a background model trained on perturbed
  inputs (``glowtorch train --perturb 0.2``): Ren et al. 2019, "Likelihood ratios for out-of-distribution
  detection". Assumes the background model captures the population-level statistics (background,
  smoothness) that dominate likelihood, so the ratio keeps what is specific to the in-distribution data.

AUROC, AUPR and FPR95 treat the out-of-distribution images as the positive class.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data import DataError, load_dataset, resize_images
from .evaluate import score_images
from .files import atomic_write
from .model import Glow
from .preprocess import to_uint8

__all__ = [
    "SCORES",
    "SYNTHETIC",
    "TRANSFORMS",
    "OODReport",
    "auroc",
    "aupr",
    "fpr_at_tpr",
    "load_ood_set",
    "ood_report",
    "png_bits_per_dim",
    "typical_images",
]

SCORES = ("bpd", "typicality", "complexity", "likelihood_ratio")
TRANSFORMS = ("invert", "rot90", "hflip")  # NAME:TRANSFORM
SYNTHETIC = ("noise", "constant", "black", "smooth", "samples")  # sets made here, no data needed


# --------------------------------------------------------------------------- metrics
def _scores(values: Tensor) -> np.ndarray:
    """Scores as float64 with infinities (an image a float32 model finds impossible) at the largest finite
    value, so that they sort and tie like any other; a NaN counts as the most out-of-distribution."""
    big = np.finfo(np.float64).max
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=big, posinf=big, neginf=-big)


def _labelled(inliers: Tensor, outliers: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, scores)`` for scikit-learn: outliers are the positives; scores as ``_scores`` makes them,
    replaced by their dense ranks (the metrics depend only on the order and ties, and scikit-learn refuses
    the largest float64 values that stand for infinities)."""
    from scipy.stats import rankdata

    a, b = _scores(inliers), _scores(outliers)
    if not len(a) or not len(b):
        raise ValueError("the OOD metrics need at least one inlier and one outlier score")
    labels = np.r_[np.zeros(len(a)), np.ones(len(b))]
    return labels, rankdata(np.concatenate([a, b]), method="dense").astype(np.float64)


def auroc(inliers: Tensor, outliers: Tensor) -> float:
    """Area under the ROC curve of the score separating ``outliers`` (positives) from ``inliers``: the
    probability that a random outlier scores above a random inlier, ties counting one half
    (``sklearn.metrics.roc_auc_score``)."""
    from sklearn.metrics import roc_auc_score

    labels, scores = _labelled(inliers, outliers)
    return float(roc_auc_score(labels, scores))


def aupr(inliers: Tensor, outliers: Tensor) -> float:
    """Area under the precision-recall curve with the outliers as positives (average precision: the mean,
    over the outliers, of the precision at the threshold of each one's score, ties counted together;
    ``sklearn.metrics.average_precision_score``)."""
    from sklearn.metrics import average_precision_score

    labels, scores = _labelled(inliers, outliers)
    return float(average_precision_score(labels, scores))


def fpr_at_tpr(inliers: Tensor, outliers: Tensor, tpr: float = 0.95) -> float:
    """The share of inliers flagged at the highest threshold that flags at least ``tpr`` of the outliers
    (flagged: score >= threshold; from ``sklearn.metrics.roc_curve``). 0 is perfect; 1 means every inlier
    is flagged."""
    from sklearn.metrics import roc_curve

    labels, scores = _labelled(inliers, outliers)
    false_rates, true_rates, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(false_rates[np.searchsorted(true_rates, tpr - 1e-9)])


def _separation(inliers: Tensor, outliers: Tensor) -> dict[str, float]:
    """How a score separates ``outliers`` from ``inliers``: the report's ``auroc``, ``aupr`` and ``fpr95``."""
    return {"auroc": auroc(inliers, outliers), "aupr": aupr(inliers, outliers), "fpr95": fpr_at_tpr(inliers, outliers)}


# --------------------------------------------------------------------------- sets
def png_bits_per_dim(images: Tensor) -> Tensor:
    """Bits per dimension of each uint8 image ``(N, C, H, W)`` losslessly compressed as PNG (level 9):
    the complexity estimate of Serrà et al. 2020. ``(N,)`` float64."""
    from PIL import Image

    sizes = []
    for image in images:
        array = image.permute(1, 2, 0).numpy()
        picture = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=9, optimize=True)
        sizes.append(8.0 * len(buffer.getvalue()) / image.numel())
    return torch.tensor(sizes, dtype=torch.float64)


def load_ood_set(spec: str, model: Glow, limit: int | None = None, seed: int = 0) -> tuple[str, Tensor]:
    """``(name, uint8 images (N, C, H, W))`` for a set named ``NAME[:TRANSFORM][=DIR]``: a dataset's test
    split (``mnist=path``), transformed (``mnist:invert``, ``:rot90``, ``:hflip``), or made here (``noise``:
    uniform pixels; ``constant``: one random grey level per image; ``black``: all zero; ``smooth``: 4x4
    uniform noise upsampled bilinearly, dimmed to 0..63; ``samples``: the model's own samples at
    temperature 1). Images of another size are resized to the model's (``digits`` 8x8 -> 28x28: upscaled
    digits); another channel count is refused."""
    channels, height, width = model.config.image_shape
    name, _, data_dir = spec.partition("=")
    dataset, _, transform = name.partition(":")
    count = limit or 10000
    generator = torch.Generator().manual_seed(seed)
    if dataset in SYNTHETIC:
        if dataset == "noise":
            images = torch.randint(0, 256, (min(count, 2000), channels, height, width), generator=generator)
        elif dataset == "constant":
            levels = torch.randint(0, 256, (min(count, 2000), 1, 1, 1), generator=generator)
            images = levels.expand(-1, channels, height, width)
        elif dataset == "black":
            images = torch.zeros(min(count, 2000), channels, height, width)
        elif dataset == "smooth":
            coarse = torch.rand(min(count, 2000), channels, 4, 4, generator=generator) * 63
            images = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False).round()
        else:
            with torch.no_grad():
                x = model.sample(min(count, 2000), 1.0, generator=generator)
            images = to_uint8(x.clamp(-0.5, 0.5), model.config.n_bits)
        images = images.to(torch.uint8).contiguous()
    else:
        data = load_dataset(dataset, data_dir or None, train=False, channels=channels)
        images = _fit_to_model(data.images[:count], name, model)
    if transform:
        if transform not in TRANSFORMS:
            raise DataError(f"unknown transform {transform!r} in {spec!r}; use one of {', '.join(TRANSFORMS)}")
        if transform == "invert":
            images = 255 - images
        elif transform == "rot90":
            images = images.rot90(1, dims=(2, 3)).contiguous()
        else:
            images = images.flip(3).contiguous()
    return name, images


def _fit_to_model(images: Tensor, name: str, model: Glow) -> Tensor:
    """uint8 ``images`` of a dataset at the model's size (resized); another channel count is refused."""
    channels, height, width = model.config.image_shape
    if images.shape[1] != channels:
        raise DataError(f"{name} images have {images.shape[1]} channel(s), the model expects {channels}")
    return resize_images(images, (height, width))  # images of the model's size come back as they are


def typical_images(spec: str, model: Glow, count: int = 2000, seed: int = 0) -> Tensor:
    """``count`` random images of the training split of the dataset ``NAME=DIR``, at the model's size: the
    images whose mean bits/dim is the typical value of the typicality scores."""
    name, _, data_dir = spec.partition("=")
    images = load_dataset(name, data_dir or None, train=True, channels=model.config.image_shape[0]).images
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    return _fit_to_model(images[chosen], name, model)


# --------------------------------------------------------------------------- the report
@dataclass
class OODReport:
    """Per-image scores of each set (``scores[set][score]``: ``(N,)``), the training set's typical bits/dim,
    and the metrics of each out set against the in set (``metrics[set][score]``: auroc, aupr, fpr95)."""

    in_set: str
    typical_bpd: float
    batch_size: int
    scores: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def table(self) -> str:
        """A markdown table: one row per out set and score."""
        lines = ["| out set | score | AUROC | AUPR | FPR95 |", "|---|---|---|---|---|"]
        for name, by_score in self.metrics.items():
            for score, m in by_score.items():
                lines.append(f"| {name} | {score} | {m['auroc']:.3f} | {m['aupr']:.3f} | {m['fpr95']:.3f} |")
        return "\n".join(lines)

    def write(self, folder: str | Path) -> Path:
        """``scores.csv`` (one row per image and set, a column per score), ``metrics.json``, ``metrics.md``
        and one histogram per score (``hist_SCORE.png``) in ``folder``."""
        from .plots import plot_score_histogram

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = [s for s in SCORES if any(s in by_score for by_score in self.scores.values())]

        def write_csv(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["set", "index", *names])
                for set_name, by_score in self.scores.items():
                    columns = [by_score.get(n) for n in names]
                    for i in range(len(by_score["bpd"])):
                        writer.writerow([set_name, i, *("" if c is None else f"{c[i].item():.6f}" for c in columns)])

        atomic_write(folder / "scores.csv", write_csv)
        summary = {"in_set": self.in_set, "typical_bpd": self.typical_bpd, "batch_size": self.batch_size,
                   "metrics": self.metrics}  # fmt: skip
        atomic_write(folder / "metrics.json", lambda p: Path(p).write_text(json.dumps(summary, indent=2) + "\n"))
        atomic_write(folder / "metrics.md", lambda p: Path(p).write_text(self.table() + "\n"))
        for score in names:
            values = {n: by_score[score] for n, by_score in self.scores.items() if score in by_score}
            label = f"{score} (values beyond the axis: in its end bins)"
            plot_score_histogram(values, folder / f"hist_{score}.png", xlabel=label, robust=True)
        return folder


def _batch_means(values: Tensor, batch_size: int) -> Tensor:
    whole = len(values) // batch_size * batch_size
    return values[:whole].view(-1, batch_size).mean(1)


def ood_report(
    model: Glow,
    in_set: tuple[str, Tensor],
    out_sets: list[tuple[str, Tensor]],
    train_images: Tensor,
    background: Glow | None = None,
    batch_size: int = 8,
    draws: int = 1,
    progress: bool = False,
) -> OODReport:
    """Scores the in-distribution test images ``in_set`` and each out set (``(name, uint8 images)``) with
    every score (``likelihood_ratio`` only with a ``background`` model) and measures how each score
    separates each out set from the in set. ``train_images`` (uint8) give the typical bits/dim.
    ``batch_size`` is the batch of the batch typicality test; every set needs at least two such batches."""
    if batch_size < 1:
        raise ValueError("the typicality test's batch size must be at least 1")
    for name, images in [in_set, *out_sets]:
        if len(images) < 2 * batch_size:
            raise ValueError(
                f"{name} has {len(images)} images: the batch typicality test needs at least {2 * batch_size} "
                f"(two batches of {batch_size}); give more or lower --batch-size"
            )
    if model.config.num_classes:
        raise ValueError("OOD scores need an unconditional model (p(x), not p(x | y))")

    def bpd(m: Glow, images: Tensor) -> Tensor:
        return score_images(m, images, draws=draws, progress=progress).bits_per_dim

    typical = bpd(model, train_images).mean().item()
    report = OODReport(in_set[0], typical, batch_size)
    for name, images in [in_set, *out_sets]:
        values = bpd(model, images)
        scores = {"bpd": values, "typicality": (values - typical).abs(),
                  "complexity": values - png_bits_per_dim(images)}  # fmt: skip
        if background is not None:
            scores["likelihood_ratio"] = values - bpd(background, images)
        report.scores[name] = scores
    inliers = report.scores[in_set[0]]
    for name, _ in out_sets:
        outliers = report.scores[name]
        report.metrics[name] = {score: _separation(inliers[score], outliers[score]) for score in outliers}
        a = (_batch_means(inliers["bpd"], batch_size) - typical).abs()
        b = (_batch_means(outliers["bpd"], batch_size) - typical).abs()
        report.metrics[name][f"typicality_batch{batch_size}"] = _separation(a, b)
    return report
