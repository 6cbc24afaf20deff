"""What the training steps did, as metrics.jsonl reports it: one ``StepRecord`` per step, gathered from
every process in one all-reduce, summed up in a ``TrainingWindow`` per evaluation interval, and the
progress line a person reads."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..distributed import Distributed

__all__ = [
    "OUTLIER_BPD",
    "ProgressBar",
    "StepRecord",
    "Throughput",
    "TrainingWindow",
    "gather_step_record",
    "progress_line",
]


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def progress_line(metrics: dict, max_steps: int | None = None, max_minutes: float | None = None) -> str:
    """One evaluation as a person reads it, e.g. ``step 1875 | epoch 1.0 | train 2.050 | test 1.901 bits/dim
    (median 1.931) | 354 img/s | 2:51 elapsed, ~5:09 left`` (the whole line is in metrics.jsonl)."""
    parts = [f"step {metrics['step']}", f"epoch {metrics['epoch']:.1f}"]
    train_bpd = metrics.get("train_bpd_mean", metrics.get("train_bpd"))
    if train_bpd is not None:
        parts.append(f"train {train_bpd:.3f}")
    if "test_bpd" in metrics:
        parts.append(f"test {metrics['test_bpd']:.3f} bits/dim (median {metrics['test_bpd_median']:.3f})")
    if "baseline_bpd" in metrics:
        parts.append(f"baseline {metrics['baseline_bpd']:.3f}")
    if "test_accuracy" in metrics:
        parts.append(f"accuracy {metrics['test_accuracy']:.3f}")
    parts.append(f"{metrics['train_images_per_s']:.0f} img/s")
    elapsed, step = metrics["elapsed_s"], metrics["step"]
    left = []
    if max_steps and step:
        left.append(elapsed / step * max(0, max_steps - step))
    if max_minutes:
        left.append(max(0.0, max_minutes * 60 - elapsed))
    parts.append(f"{_clock(elapsed)} elapsed" + (f", ~{_clock(min(left))} left" if left else ""))
    return " | ".join(parts)


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step as the diagnostics see it: the global batch's mean bits/dim, its worst image
    (bits/dim and index in the training set), how many of its images scored above ``OUTLIER_BPD``, and
    the gradient norm before clipping."""

    step: int
    bpd: float
    worst_image_bpd: float
    worst_image: int
    outliers: int
    grad_norm: float


OUTLIER_BPD = 10.0  # an image above this is far outside what a trained model gives any training image


class TrainingWindow:
    """What the steps since the last evaluation did, for metrics.jsonl: the mean batch bits/dim (unsmoothed),
    the worst batch and its step, the worst single image (its bits/dim, training-set index and step), how
    many images scored above ``OUTLIER_BPD``, and the gradient norm before clipping (largest, and how many
    steps were clipped). A single bad image shows here even when the smoothed curve and the test score
    hide it; ``experiments/replay_step.py`` takes its batch apart."""

    def __init__(self) -> None:
        self.steps, self.total = 0, 0.0
        self.worst, self.worst_step = -math.inf, -1
        self.worst_image: StepRecord | None = None
        self.outliers = 0
        self.max_norm, self.clipped = 0.0, 0

    def add(self, record: StepRecord, clip: float) -> None:
        self.steps += 1
        self.total += record.bpd
        if record.bpd > self.worst:
            self.worst, self.worst_step = record.bpd, record.step
        if self.worst_image is None or record.worst_image_bpd > self.worst_image.worst_image_bpd:
            self.worst_image = record
        self.outliers += record.outliers
        self.max_norm = max(self.max_norm, record.grad_norm)
        self.clipped += int(clip > 0 and record.grad_norm > clip)

    def summary(self) -> dict:
        if not self.steps:
            return {}
        return {
            "train_bpd_mean": self.total / self.steps,
            "train_bpd_worst_batch": self.worst,
            "train_worst_step": self.worst_step,
            "train_worst_image_bpd": self.worst_image.worst_image_bpd,
            "train_worst_image": self.worst_image.worst_image,
            "train_worst_image_step": self.worst_image.step,
            "train_images_above_10": self.outliers,
            "grad_norm_max": self.max_norm,
            "clipped_steps": self.clipped,
        }


def gather_step_record(
    step: int, per_image: Tensor, indices: Tensor, grad_norm: Tensor, dist: Distributed
) -> StepRecord | None:
    """The step's record over all processes, from this process's per-image bits/dim ``(b,)`` and their
    training-set ``indices`` ``(b,)``; None when any process saw a non-finite value. One all-reduce: the
    global mean, the outlier count, and each process's worst image in its own slot."""
    per_image = per_image.double()
    rank, world = dist.rank, dist.world_size
    packed = torch.zeros(2 + 2 * world, dtype=torch.float64, device=per_image.device)
    packed[0] = per_image.mean() / world
    packed[1] = (per_image > OUTLIER_BPD).sum()
    worst_bpd, worst_at = per_image.max(0)
    packed[2 + 2 * rank] = worst_bpd
    packed[3 + 2 * rank] = float(indices[int(worst_at)])
    packed = dist.all_reduce_sum(packed).cpu()
    if not bool(torch.isfinite(packed).all()):
        return None
    worst = int(packed[2::2].argmax())
    return StepRecord(step, packed[0].item(), packed[2 + 2 * worst].item(), int(packed[3 + 2 * worst].item()),
                      int(packed[1].item()), float(grad_norm))  # fmt: skip


class Throughput:
    """Training images per second since the last evaluation."""

    def __init__(self) -> None:
        self.images, self.since = 0, time.monotonic()

    def add(self, images: int) -> None:
        self.images += images

    def rate(self) -> float:
        return self.images / max(time.monotonic() - self.since, 1e-9)

    def restart(self) -> None:
        self.images, self.since = 0, time.monotonic()


class ProgressBar:
    """The tqdm bar, its postfix (smoothed bits/dim, images/s) refreshed at most every 2 seconds."""

    def __init__(self, total: int | None, initial: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                        mininterval=1.0)  # fmt: skip
        self.images, self.since = 0, time.monotonic()

    def update(self, images: int, bpd: float | None) -> None:
        self.bar.update(1)
        self.images += images
        now = time.monotonic()
        if now - self.since > 2.0:
            rate = self.images / (now - self.since)
            self.bar.set_postfix(bpd=f"{bpd or float('nan'):.3f}", img_s=f"{rate:.0f}")
            self.images, self.since = 0, now

    def close(self) -> None:
        self.bar.close()
