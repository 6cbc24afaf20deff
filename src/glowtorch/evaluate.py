"""Per-image bits/dim of a dataset, the one computation behind test bits/dim, ``glowtorch evaluate``
and ``glowtorch score``.

The dequantization noise of image ``i`` in draw ``d`` depends only on the seed, ``d`` and ``i`` (it is
drawn in fixed blocks of ``NOISE_BLOCK`` images), never on the batch size or the number of processes,
so every way of computing a score gives the same number.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .data import Dataset, step_generator
from .distributed import Distributed
from .files import atomic_write
from .latent import check_images
from .likelihood import nll_bits_per_dim
from .model import Glow
from .preprocess import dequantize

__all__ = [
    "ImageScores",
    "evaluate_bits_per_dim",
    "importance_weighted_bits",
    "score_images",
    "summarize_scores",
    "write_scores",
]

NOISE_BLOCK = 500


@dataclass(frozen=True)
class ImageScores:
    """``bits_per_dim``: ``(N,)`` float64, each image's bits/dim averaged over the draws (the mean of the
    one-sample bounds); ``importance_weighted``: ``(N,)`` float64, the importance-weighted bound over the same
    draws, ``-log2((1/K) sum_k p(x + u_k) / q(u_k | x)) / D`` (equal to ``bits_per_dim`` for one draw);
    ``predicted``: ``(N,)`` the latent classifier's class per image (conditional models with labels) or None;
    ``predicted_likelihood``: ``(N,)`` the class ``y`` with the highest ``p(x | y)`` (first draw), or None."""

    bits_per_dim: Tensor
    predicted: Tensor | None = None
    predicted_likelihood: Tensor | None = None
    importance_weighted: Tensor | None = None


def importance_weighted_bits(per_draw: Tensor, num_dims: int) -> Tensor:
    """The importance-weighted bound ``(N,)`` from each draw's one-sample bound in bits/dim ``(K, N)``.

    A draw's bound is ``b_k = (-log w_k) / (D ln 2)`` plus the bin-volume constant, with
    ``w_k = p(x + u_k) / q(u_k | x)``; so ``-log2((1/K) sum_k w_k) / D`` is ``-logmeanexp_k(-b_k D ln 2)
    / (D ln 2)`` (the constant passes through). Never above the mean of the ``b_k`` (Jensen), and its
    expectation falls toward ``-log2 P(x) / D`` as K grows (Burda et al. 2016).
    """
    scale = num_dims * math.log(2.0)
    log_mean = torch.logsumexp(-per_draw.double() * scale, dim=0) - math.log(per_draw.shape[0])
    return -log_mean / scale


class _Noise:
    """Uniform dequantization noise of images ``[start, stop)`` in one draw, from fixed-size blocks."""

    def __init__(self, images: Tensor, seed: int, draw: int) -> None:
        self.images, self.seed, self.draw = images, seed, draw
        self._block: tuple[int, Tensor] | None = None

    def block(self, first: int) -> Tensor:
        if self._block is None or self._block[0] != first:
            generator = step_generator(self.seed, first, stream=100 + self.draw)
            shape = self.images[first : first + NOISE_BLOCK].shape
            self._block = (first, torch.rand(shape, generator=generator, dtype=torch.float32))
        return self._block[1]

    def __call__(self, start: int, stop: int) -> Tensor:
        parts = []
        for first in range(start - start % NOISE_BLOCK, stop, NOISE_BLOCK):
            block = self.block(first)
            parts.append(block[max(start, first) - first : min(stop, first + NOISE_BLOCK) - first])
        return torch.cat(parts)


@torch.no_grad()
def score_images(
    model: Glow,
    images: Tensor,
    labels: Tensor | None = None,
    batch_size: int = 500,
    draws: int = 1,
    seed: int = 1234,
    dist: Distributed | None = None,
    progress: bool = False,
    contexts: Tensor | None = None,
) -> ImageScores:
    """Per-image bits/dim of uint8 ``images`` ``(N, C, H, W)``, averaged over ``draws`` fixed-seed draws of
    the dequantization noise (the likelihood score used for out-of-distribution detection), and the
    importance-weighted bound over the same draws (``ImageScores.importance_weighted``).
    Computed with the coupling networks in full precision (``Glow.full_precision``), whatever the model's
    ``ComputeConfig``: the one function every reported likelihood comes from.

    Class-conditional models need ``labels`` ``(N,)``: the images are scored under their own class,
    and the latent classifier's predictions come back too. Models conditioned on a context score
    ``-log p(x | context)``: with ``condition="lowres:F"`` each image's context is its own low-resolution
    version unless ``contexts`` ``(N, C_c, h, w)`` (model space) are given; "tensor:" models need them.
    With ``dist``, process r scores batches r, r + W, ... and the results are all-reduced: every process
    gets all N scores, equal to one process's.
    """
    from tqdm import tqdm

    dist = dist or Distributed()
    model.eval()
    config, ref = model.config, model.top_prior
    check_images(model, images)
    if config.num_classes and labels is None:
        raise ValueError("the model is class-conditional: pass the images' labels")
    conditional = config.num_classes > 0
    n = len(images)
    if config.condition and contexts is None:
        contexts = torch.cat([config.context_of(images[s : s + batch_size]) for s in range(0, n, batch_size)])
    if contexts is not None and len(contexts) != n:
        raise ValueError(f"pass one context per image: {n} images, {len(contexts)} contexts")
    batches = [(d, s) for d in range(draws) for s in range(0, n, batch_size)]
    # bits/dim of each image in each draw, then the two predicted classes (+1, so 0 means "not scored")
    totals = torch.zeros((draws + 2) * n, dtype=torch.float64)
    noises = [_Noise(images, seed, d) for d in range(draws)]
    mine = batches[dist.rank :: dist.world_size]
    with model.full_precision():  # a likelihood is reported in float32 (or float64), whatever the model trains in
        for draw, start in tqdm(mine, desc="scoring", leave=False, disable=not progress or not dist.is_main):
            stop = min(start + batch_size, n)
            noise = noises[draw](start, stop)
            x = dequantize(images[start:stop], config.n_bits, noise=noise).to(device=ref.device, dtype=ref.dtype)
            x, log_q = model.dequantized(x, noise.to(x))
            y = labels[start:stop].to(ref.device) if conditional else None
            context = contexts[start:stop] if contexts is not None else None
            zs, logdet, log_prior = model(x, y, context=context)
            bits = nll_bits_per_dim(log_prior + logdet - log_q, config.num_dims, config.n_bits)
            totals[draw * n + start : draw * n + stop] = bits.double().cpu()
            if conditional and draw == 0:
                classes = draws * n
                totals[classes + start : classes + stop] = model.classifier_logits(zs[-1]).argmax(1).double().cpu() + 1
                by_likelihood = model.class_log_likelihoods(zs[-1], context=context).argmax(1)
                totals[classes + n + start : classes + n + stop] = by_likelihood.double().cpu() + 1
    totals = dist.all_reduce_sum(totals.to(ref.device)).cpu()
    per_draw = totals[: draws * n].view(draws, n)
    mean, weighted = per_draw.sum(0) / draws, importance_weighted_bits(per_draw, config.num_dims)
    if not conditional:
        return ImageScores(mean, importance_weighted=weighted)
    classes = totals[draws * n :]
    return ImageScores(mean, (classes[:n] - 1).long(), (classes[n:] - 1).long(), weighted)


def evaluate_bits_per_dim(
    model: Glow,
    dataset: Dataset,
    batch_size: int = 500,
    draws: int = 1,
    seed: int = 1234,
    progress: bool = False,
    dist: Distributed | None = None,
) -> dict[str, float]:
    """Bits/dim of a whole dataset (``score_images`` summarized): per-image values summed in float64 and
    divided by N (not a mean of batch means); conditional models are scored with the true labels.

    Returns ``test_bpd`` (the exact mean), ``test_bpd_median``, and ``test_bpd_max`` with its image's
    index ``test_worst_image``: one image the model finds extremely unlikely can move the mean far
    from the median, and these say whether that happened. Conditional models add ``test_accuracy``
    (the latent classifier) and ``test_accuracy_likelihood`` (the class of highest ``p(x | y)``). With
    more than one draw, ``test_bpd_importance_weighted`` is the mean of the per-image importance-weighted
    bounds over the ``draws`` samples (``test_bpd`` stays the mean of the one-sample bounds).
    """
    labels = dataset.labels if model.config.num_classes else None
    if model.config.num_classes and labels is None:
        raise ValueError("a class-conditional model is evaluated on a dataset with labels")
    scores = score_images(model, dataset.images, labels, batch_size, draws, seed, dist, progress)
    result = summarize_scores(scores, labels)
    if draws > 1:
        result["test_bpd_importance_weighted"] = scores.importance_weighted.sum().item() / len(dataset.images)
    return result


def summarize_scores(scores: ImageScores, labels: Tensor | None = None) -> dict[str, float]:
    """``test_bpd`` (the exact mean of the per-image values), ``test_bpd_median``, ``test_bpd_max`` and its
    image's index ``test_worst_image``; ``test_accuracy`` of the latent classifier and
    ``test_accuracy_likelihood`` of the model's own classification (highest ``p(x | y)``) when they predicted."""
    per_image = scores.bits_per_dim
    worst = int(per_image.argmax())
    result = {
        "test_bpd": per_image.sum().item() / len(per_image),
        "test_bpd_median": per_image.median().item(),
        "test_bpd_max": per_image[worst].item(),
        "test_worst_image": worst,
    }
    if scores.predicted is not None:
        result["test_accuracy"] = (scores.predicted == labels).double().mean().item()
    if scores.predicted_likelihood is not None:
        result["test_accuracy_likelihood"] = (scores.predicted_likelihood == labels).double().mean().item()
    return result


def write_scores(path: str | Path, scores: dict[str, Tensor]) -> Path:
    """Writes per-image bits/dim (``{dataset: (N,)}``) as a CSV ``dataset,index,bits_per_dim``, atomically."""
    path = Path(path)
    rows = [(name, i, f"{v:.6f}") for name, values in scores.items() for i, v in enumerate(values.tolist())]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["dataset", "index", "bits_per_dim"])
            writer.writerows(rows)

    atomic_write(path, write)
    return path
