"""Rational-quadratic spline coupling (Durkan et al. 2019, "Neural Spline Flows").

The transformed half of a coupling goes through a monotone rational-quadratic spline per element, its knots
and derivatives given by the coupling network from the conditioning half. The spline maps ``[-BOUND, BOUND]``
onto itself with ``BINS`` bins; outside that interval it is the identity (linear tails, derivative 1 at the
ends, so the map is continuously differentiable). The inverse solves a quadratic in closed form, so the
layer is as exact as affine coupling: forward, inverse and the log-determinant are formulas, not iterations.

A new spline coupling is the identity: the network's zero-initialized output gives equal bin widths and
heights and derivatives of exactly 1 (the raw derivative is shifted so that softplus puts 1 at zero).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .layers import Coupling

BINS = 8
BOUND = 3.0
MIN_BIN = 1e-3  # smallest bin width and height, as a fraction of the interval
MIN_DERIVATIVE = 1e-3
_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))  # softplus(0 + _SHIFT) + MIN_DERIVATIVE == 1


def knots(raw: Tensor, bound: float = BOUND) -> tuple[Tensor, Tensor]:
    """Bin edges and sizes on ``[-bound, bound]`` from ``(..., K)`` unnormalized sizes: ``(edges (..., K+1),
    sizes (..., K))``, every size at least ``MIN_BIN`` of the interval; the first and last edges are exactly
    ``-bound`` and ``bound``."""
    bins = raw.shape[-1]
    fractions = MIN_BIN + (1 - MIN_BIN * bins) * torch.softmax(raw, dim=-1)
    edges = F.pad(torch.cumsum(fractions, dim=-1), (1, 0))
    edges = 2 * bound * edges - bound
    ends = torch.full_like(edges[..., :1], bound)
    edges = torch.cat([-ends, edges[..., 1:-1], ends], -1)  # exactly +-bound, whatever the rounding of the sum
    return edges, edges[..., 1:] - edges[..., :-1]


def derivatives(raw: Tensor) -> Tensor:
    """``(..., K + 1)`` knot derivatives from ``(..., K - 1)`` raw interior values: 1 at both ends (the linear
    tails), ``MIN_DERIVATIVE + softplus(raw + shift)`` inside (1 where raw is 0)."""
    inside = MIN_DERIVATIVE + F.softplus(raw + _SHIFT)
    return F.pad(inside, (1, 1), value=1.0)


def _gather(values: Tensor, index: Tensor) -> Tensor:
    return values.gather(-1, index[..., None])[..., 0]


def rational_quadratic(
    x: Tensor, widths: Tensor, heights: Tensor, slopes: Tensor, inverse: bool = False, bound: float = BOUND
) -> tuple[Tensor, Tensor]:
    """The spline (or its inverse) applied element-wise: ``x`` of any shape ``S``; ``widths``, ``heights``
    ``(*S, K)`` and ``slopes`` ``(*S, K - 1)`` unnormalized. Returns ``(y, log |dy/dx|)``, both of shape
    ``S``; for the inverse, ``log |dx/dy|`` (the negative of the forward's at the same point)."""
    x_edges, x_sizes = knots(widths, bound)
    y_edges, y_sizes = knots(heights, bound)
    d = derivatives(slopes)
    inside = (x >= -bound) & (x <= bound)
    v = x.clamp(-bound, bound)
    edges = y_edges if inverse else x_edges
    k = (v[..., None] >= edges[..., 1:-1]).sum(-1)  # the bin: how many interior edges lie at or below v
    x_k, w = _gather(x_edges, k), _gather(x_sizes, k)
    y_k, h = _gather(y_edges, k), _gather(y_sizes, k)
    d_k, d_k1 = _gather(d, k), _gather(d, k + 1)
    s = h / w
    curve = d_k1 + d_k - 2 * s
    if inverse:
        dy = v - y_k
        a = h * (s - d_k) + dy * curve
        b = h * d_k - dy * curve
        c = -s * dy
        xi = (2 * c) / (-b - torch.sqrt((b * b - 4 * a * c).clamp(min=0)))
        out = x_k + xi * w
    else:
        xi = (v - x_k) / w
        out = y_k + h * (s * xi * xi + d_k * xi * (1 - xi)) / (s + curve * xi * (1 - xi))
    xi = xi.clamp(0, 1)
    denominator = s + curve * xi * (1 - xi)
    slope = s * s * (d_k1 * xi * xi + 2 * s * xi * (1 - xi) + d_k * (1 - xi) ** 2) / (denominator * denominator)
    log_slope = torch.log(slope)
    y = torch.where(inside, out, x)
    log_det = torch.where(inside, -log_slope if inverse else log_slope, torch.zeros_like(x))
    return y, log_det


class SplineCoupling(Coupling):
    """``y_b = RQS(x_b; NN(x_a))``, ``y_a = x_a``: a monotone rational-quadratic spline per element of the
    transformed half, ``BINS`` bins on ``[-BOUND, BOUND]``, identity outside. The network's output has
    ``3 * BINS - 1`` channels per transformed channel (bin widths, bin heights, interior derivatives, in
    that order within each channel's group). logdet = sum of log dy/dx."""

    out_factor = 3 * BINS - 1

    def _coefficients(self, x_a: Tensor, context: Tensor | None) -> tuple[Tensor, ...]:
        h = self.network(x_a, context)
        b, _, height, width = h.shape
        h = h.view(b, -1, self.out_factor, height, width).permute(0, 1, 3, 4, 2)  # (B, C_b, H, W, 3K - 1)
        return h[..., :BINS], h[..., BINS : 2 * BINS], h[..., 2 * BINS :]

    def _map(self, v: Tensor, coefficients: tuple[Tensor, ...], inverse: bool) -> tuple[Tensor, Tensor]:
        out, log_slope = rational_quadratic(v, *coefficients, inverse=inverse)
        return out, log_slope.flatten(1).sum(1)
