"""``precision="auto"``: bfloat16 coupling networks where this device runs them clearly faster.

Whether bfloat16 pays depends on the machine: CPUs of one kind ran a 3x3 convolution in bfloat16 at half
the float32 rate on one machine and at twice the rate on another, and GPUs before Ampere have no
bfloat16 arithmetic. So "auto" measures: it times the model's own coupling-network convolutions in
float32 and in bfloat16 (well under a second, once per process and shape), in interleaved pairs, and takes
bfloat16 only when it is at least ``SPEEDUP_NEEDED`` times faster in three pairs out of four (the lower
quartile of the paired speedups): a ratio near the threshold, or measurements whose spread is as large
as the margin, keep float32, so the same command on the same machine makes the same choice.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .config import PRECISIONS, GlowConfig
from .couplings import COUPLINGS

__all__ = [
    "PRECISION_CHOICES",
    "SPEEDUP_NEEDED",
    "PrecisionChoice",
    "ProbeRates",
    "check_precision",
    "choose",
    "has_bfloat16",
    "paired_speedups",
    "probe_rates",
    "resolve_precision",
]

PRECISION_CHOICES = ("auto", *PRECISIONS)
SPEEDUP_NEEDED = 1.2
MIN_PAIRS = 5  # fewer paired measurements than this decide nothing: float32
SAMPLE_SECONDS = 2e-3  # each timed sample repeats the convolutions for at least this long (timer granularity)


class ProbeRates(NamedTuple):
    """What the probe measured: each dtype's median rate (GFLOP/s) and the lower quartile of the paired
    speedups of bfloat16 over float32 (the speedup bfloat16 reached in three pairs out of four)."""

    float32_gflops: float
    bfloat16_gflops: float
    speedup_low: float


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run computes its coupling networks in, and why.

    ``float32_gflops`` / ``bfloat16_gflops`` are the probe's rates (None when nothing was measured).
    """

    precision: str
    how: str
    float32_gflops: float | None = None
    bfloat16_gflops: float | None = None
    speedup_low: float | None = None

    def summary(self) -> str:
        """One line for a run's header, e.g. ``precision bfloat16 (auto: coupling-network convolutions at
        1045 GFLOP/s in bfloat16, 533 in float32, x1.96)``."""
        if self.float32_gflops is None or self.bfloat16_gflops is None:
            return f"precision {self.precision} ({self.how})"
        ratio = self.bfloat16_gflops / self.float32_gflops
        low = "" if self.speedup_low is None else f", x{self.speedup_low:.2f} in 3 of 4 paired runs"
        return (
            f"precision {self.precision} ({self.how}: coupling-network convolutions at "
            f"{self.bfloat16_gflops:.0f} GFLOP/s in bfloat16, {self.float32_gflops:.0f} in float32, x{ratio:.2f}{low})"
        )

    def record(self) -> dict:
        """What a run writes about the choice (train_config.json, metrics.jsonl)."""
        return {
            "precision": self.precision,
            "precision_how": self.how,
            "probe_float32_gflops": self.float32_gflops,
            "probe_bfloat16_gflops": self.bfloat16_gflops,
            "probe_speedup_low": self.speedup_low,
        }


def choose(
    float32_gflops: float,
    bfloat16_gflops: float,
    speedup_needed: float = SPEEDUP_NEEDED,
    speedup_low: float | None = None,
) -> str:
    """ "bfloat16" when the probe measured it at least ``speedup_needed`` times faster, else "float32". With
    ``speedup_low`` (the lower quartile of paired speedups), that is what must reach ``speedup_needed``,
    and the median ratio too."""
    ratio = bfloat16_gflops / float32_gflops
    sure = ratio if speedup_low is None else min(ratio, speedup_low)
    return "bfloat16" if sure >= speedup_needed else "float32"


def paired_speedups(float32_seconds: list[float], bfloat16_seconds: list[float]) -> float:
    """The lower quartile of the paired speedups ``float32_seconds[i] / bfloat16_seconds[i]`` (measured one
    after the other, so a slow moment of the machine hits both of a pair), or 0 with fewer than
    ``MIN_PAIRS`` pairs: nothing is decided on so little."""
    ratios = sorted(a / b for a, b in zip(float32_seconds, bfloat16_seconds, strict=True) if b > 0)
    if len(ratios) < MIN_PAIRS:
        return 0.0
    return statistics.quantiles(ratios, n=4, method="inclusive")[0]


def _coupling_shapes(config: GlowConfig, batch: int) -> list[tuple[int, int, int, int, int]]:
    """(batch, in, out, kernel, size) of the first level's coupling-network convolutions, the largest."""
    channels, height, _ = config.image_shape
    half, side, hidden = (4 * channels) // 2, height // 2, config.hidden_channels
    out = 4 * channels - half
    factor = COUPLINGS[config.coupling].out_factor
    return [(batch, half, hidden, 3, side), (batch, hidden, hidden, 1, side), (batch, hidden, factor * out, 3, side)]


_RATES: dict[tuple, ProbeRates] = {}


def probe_rates(
    shapes: list[tuple[int, int, int, int, int]], device: str | torch.device = "cpu", seconds: float = 0.3
) -> ProbeRates:
    """Rates of forward convolutions of ``shapes`` (channels-last, as the model computes) in float32 and in
    bfloat16 on ``device``, timed in interleaved pairs for about ``2 * seconds``, each sample repeating the
    convolutions for at least ``SAMPLE_SECONDS``. Cached per process for the same shapes and device."""
    device = torch.device(device)
    key = (tuple(shapes), str(device))
    if key in _RATES:
        return _RATES[key]
    generator = torch.Generator().manual_seed(0)
    passes, flops = {}, 0.0
    for dtype in (torch.float32, torch.bfloat16):
        tensors = []
        for batch, c_in, c_out, kernel, side in shapes:
            x = torch.randn(batch, c_in, side, side, generator=generator).to(device, dtype)
            w = torch.randn(c_out, c_in, kernel, kernel, generator=generator).to(device, dtype) * 0.05
            tensors.append((x.contiguous(memory_format=torch.channels_last),
                            w.contiguous(memory_format=torch.channels_last), kernel // 2))  # fmt: skip
            if dtype == torch.float32:
                flops += 2.0 * batch * c_in * c_out * kernel * kernel * side * side
        passes[dtype] = tensors
    f32, bf16 = _paired_seconds(passes[torch.float32], passes[torch.bfloat16], device, seconds)
    _RATES[key] = ProbeRates(flops / statistics.median(f32) / 1e9, flops / statistics.median(bf16) / 1e9,
                             paired_speedups(f32, bf16))  # fmt: skip
    return _RATES[key]


@torch.no_grad()
def _paired_seconds(
    float32: list[tuple[torch.Tensor, torch.Tensor, int]],
    bfloat16: list[tuple[torch.Tensor, torch.Tensor, int]],
    device: torch.device,
    seconds: float,
) -> tuple[list[float], list[float]]:
    """Seconds per pass over the convolutions ``(x, w, padding)`` of each dtype, in pairs taken one after
    the other (the order alternating), after a warm-up pass of each (kernel selection, first-touch
    allocations); between ``MIN_PAIRS`` and 50 pairs, for about ``2 * seconds``."""

    def timed(tensors, repeats: int) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            for x, w, padding in tensors:
                F.conv2d(x, w, padding=padding)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / repeats

    once = max(timed(float32, 1), timed(bfloat16, 1), 1e-7)
    repeats = max(1, math.ceil(SAMPLE_SECONDS / once))
    times: tuple[list[float], list[float]] = ([], [])
    deadline = time.perf_counter() + 2 * seconds
    while len(times[0]) < MIN_PAIRS or (time.perf_counter() < deadline and len(times[0]) < 50):
        order = (0, 1) if len(times[0]) % 2 == 0 else (1, 0)
        for which in order:
            times[which].append(timed((float32, bfloat16)[which], repeats))
    return times


def has_bfloat16(device: str | torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 (every CPU does; GPUs from Ampere on)."""
    return torch.device(device).type != "cuda" or torch.cuda.is_bf16_supported()


def check_precision(precision: str, device: str | torch.device) -> None:
    """``ValueError`` when ``device`` cannot compute in the ``precision`` asked for explicitly."""
    if precision == "bfloat16" and not has_bfloat16(device):
        raise ValueError("this GPU cannot compute in bfloat16: use --precision float32")


def resolve_precision(
    precision: str, config: GlowConfig, device: str | torch.device = "cpu", batch: int = 16, dtype=torch.float32
) -> PrecisionChoice:
    """The concrete precision for ``precision`` ("auto", "float32" or "bfloat16") of a model of ``config``.

    "auto" probes this device (``probe_rates``); a GPU without bfloat16 and float64 models take float32
    without probing. "bfloat16" on a GPU without bfloat16 is a ``ValueError``.
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    device = torch.device(device)
    check_precision(precision, device)
    if precision != "auto":
        return PrecisionChoice(precision, "set explicitly")
    if dtype == torch.float64:
        return PrecisionChoice("float32", "auto: a float64 model computes in float64")
    if not has_bfloat16(device):
        return PrecisionChoice("float32", "auto: this GPU has no bfloat16")
    rates = probe_rates(_coupling_shapes(config, min(batch, 16)), device)
    precision = choose(rates.float32_gflops, rates.bfloat16_gflops, speedup_low=rates.speedup_low)
    return PrecisionChoice(precision, "auto", *rates)
