"""``precision="auto"``: bfloat16 coupling networks where this device runs them clearly faster.

Whether bfloat16 pays depends on the machine: CPUs of one kind ran a 3x3 convolution in bfloat16 at half
the float32 rate on one machine and at twice the rate on another, and GPUs before Ampere have no
bfloat16 arithmetic. So "auto" measures: it times the model's own coupling-network convolutions in
float32 and in bfloat16 (well under a second, once per process and shape) and takes bfloat16 when it is
at least ``SPEEDUP_NEEDED`` times faster.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import PRECISIONS, GlowConfig

__all__ = [
    "PRECISION_CHOICES",
    "SPEEDUP_NEEDED",
    "PrecisionChoice",
    "check_precision",
    "choose",
    "has_bfloat16",
    "probe_rates",
    "resolve_precision",
]

PRECISION_CHOICES = ("auto", *PRECISIONS)
SPEEDUP_NEEDED = 1.2


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run computes its coupling networks in, and why.

    ``float32_gflops`` / ``bfloat16_gflops`` are the probe's rates (None when nothing was measured).
    """

    precision: str
    how: str
    float32_gflops: float | None = None
    bfloat16_gflops: float | None = None

    def summary(self) -> str:
        """One line for a run's header, e.g. ``precision bfloat16 (auto: coupling-network convolutions at
        1045 GFLOP/s in bfloat16, 533 in float32, x1.96)``."""
        if self.float32_gflops is None or self.bfloat16_gflops is None:
            return f"precision {self.precision} ({self.how})"
        ratio = self.bfloat16_gflops / self.float32_gflops
        return (
            f"precision {self.precision} ({self.how}: coupling-network convolutions at "
            f"{self.bfloat16_gflops:.0f} GFLOP/s in bfloat16, {self.float32_gflops:.0f} in float32, x{ratio:.2f})"
        )

    def record(self) -> dict:
        """What a run writes about the choice (train_config.json, metrics.jsonl)."""
        return {
            "precision": self.precision,
            "precision_how": self.how,
            "probe_float32_gflops": self.float32_gflops,
            "probe_bfloat16_gflops": self.bfloat16_gflops,
        }


def choose(float32_gflops: float, bfloat16_gflops: float, speedup_needed: float = SPEEDUP_NEEDED) -> str:
    """ "bfloat16" when the probe measured it at least ``speedup_needed`` times faster, else "float32"."""
    return "bfloat16" if bfloat16_gflops >= speedup_needed * float32_gflops else "float32"


def _coupling_shapes(config: GlowConfig, batch: int) -> list[tuple[int, int, int, int, int]]:
    """(batch, in, out, kernel, size) of the first level's coupling-network convolutions, the largest."""
    channels, height, _ = config.image_shape
    half, side, hidden = (4 * channels) // 2, height // 2, config.hidden_channels
    out = 4 * channels - half
    factor = 2 if config.coupling == "affine" else 1
    return [(batch, half, hidden, 3, side), (batch, hidden, hidden, 1, side), (batch, hidden, factor * out, 3, side)]


_RATES: dict[tuple, tuple[float, float]] = {}


def probe_rates(
    shapes: list[tuple[int, int, int, int, int]], device: str | torch.device = "cpu", seconds: float = 0.3
) -> tuple[float, float]:
    """GFLOP/s of forward convolutions of ``shapes`` (channels-last, as the model computes) in float32 and in
    bfloat16 on ``device``: the median of a few repetitions, within about ``seconds`` per dtype. Cached per
    process for the same shapes and device."""
    device = torch.device(device)
    key = (tuple(shapes), str(device))
    if key in _RATES:
        return _RATES[key]
    generator = torch.Generator().manual_seed(0)
    rates = []
    for dtype in (torch.float32, torch.bfloat16):
        tensors = []
        flops = 0.0
        for batch, c_in, c_out, kernel, side in shapes:
            x = torch.randn(batch, c_in, side, side, generator=generator).to(device, dtype)
            w = torch.randn(c_out, c_in, kernel, kernel, generator=generator).to(device, dtype) * 0.05
            tensors.append((x.contiguous(memory_format=torch.channels_last),
                            w.contiguous(memory_format=torch.channels_last), kernel // 2))  # fmt: skip
            flops += 2.0 * batch * c_in * c_out * kernel * kernel * side * side

        rates.append(flops / _median_seconds(tensors, device, seconds) / 1e9)
    _RATES[key] = (rates[0], rates[1])
    return _RATES[key]


@torch.no_grad()
def _median_seconds(
    tensors: list[tuple[torch.Tensor, torch.Tensor, int]], device: torch.device, seconds: float
) -> float:
    """Median time of one pass over the convolutions ``(x, w, padding)``, after a warm-up pass (kernel
    selection, first-touch allocations), repeated for about ``seconds``."""

    def once() -> float:
        start = time.perf_counter()
        for x, w, padding in tensors:
            F.conv2d(x, w, padding=padding)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    once()
    times, deadline = [], time.perf_counter() + seconds
    while not times or (time.perf_counter() < deadline and len(times) < 50):
        times.append(once())
    return statistics.median(times)


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
    f32, bf16 = probe_rates(_coupling_shapes(config, min(batch, 16)), device)
    return PrecisionChoice(choose(f32, bf16), "auto", f32, bf16)
