"""Rational-quadratic spline coupling: the spline against its definition (knots hit, slopes at the knots,
monotone, identity outside the interval), inverse and log-derivative in float64, a new layer is the
identity, and a spline model trains and round-trips. The layer contract (float64 Jacobian, inverse) is in
test_layers.py, the whole model's in test_model.py, reversible backprop in test_fast_paths.py."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from glowtorch import Glow, GlowConfig
from glowtorch.splines import BINS, BOUND, MIN_BIN, MIN_DERIVATIVE, SplineCoupling, rational_quadratic


def params(n: int, scale: float = 1.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    raw = [torch.randn(n, k, generator=g, dtype=torch.float64) * scale for k in (BINS, BINS, BINS - 1)]
    return raw[0], raw[1], raw[2]


def edges_by_hand(raw: torch.Tensor) -> torch.Tensor:
    """The knots as the docstring defines them, written out once more: cumulative bin fractions of the
    interval, each at least MIN_BIN."""
    fractions = MIN_BIN + (1 - MIN_BIN * BINS) * torch.softmax(raw, -1)
    total = torch.cumsum(fractions, -1)
    return torch.cat([torch.zeros_like(raw[:, :1]), total], -1) * 2 * BOUND - BOUND


def test_the_spline_passes_through_its_knots_with_its_slopes() -> None:
    widths, heights, slopes = params(5)
    x_knots, y_knots = edges_by_hand(widths), edges_by_hand(heights)
    inside = MIN_DERIVATIVE + F.softplus(slopes + math.log(math.expm1(1 - MIN_DERIVATIVE)))  # 1 where slopes are 0
    d = torch.cat([torch.ones(5, 1, dtype=torch.float64), inside, torch.ones(5, 1, dtype=torch.float64)], -1)
    # every knot of each element's spline, evaluated with that element's parameters
    x = x_knots[:, 1:-1].clone().requires_grad_(True)  # interior knots (5, K - 1)
    rep = lambda t: t[:, None].expand(5, BINS - 1, t.shape[-1])  # noqa: E731
    y, log_slope = rational_quadratic(x, rep(widths), rep(heights), rep(slopes))
    assert_close(y, y_knots[:, 1:-1], atol=1e-12, rtol=0)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert_close(grad, d[:, 1:-1], atol=1e-9, rtol=1e-9)  # the slope at a knot is that knot's derivative
    assert_close(log_slope.exp(), d[:, 1:-1], atol=1e-9, rtol=1e-9)
    ends = torch.tensor([[-BOUND, BOUND]], dtype=torch.float64).expand(5, 2)
    rep2 = lambda t: t[:, None].expand(5, 2, t.shape[-1])  # noqa: E731
    assert_close(rational_quadratic(ends, rep2(widths), rep2(heights), rep2(slopes))[0], ends, atol=1e-12, rtol=0)


def test_monotone_continuous_and_the_identity_outside_the_interval() -> None:
    widths, heights, slopes = params(1, scale=3.0, seed=1)
    x = torch.linspace(-2 * BOUND, 2 * BOUND, 20001, dtype=torch.float64)[:, None].requires_grad_(True)
    rep = lambda t: t.expand(x.shape[0], 1, t.shape[-1])  # noqa: E731
    y, log_slope = rational_quadratic(x, rep(widths), rep(heights), rep(slopes))
    assert (y[1:] > y[:-1]).all()  # strictly increasing
    assert (y[1:] - y[:-1]).max() < 20 * (x[1] - x[0]) * (1 / MIN_DERIVATIVE)  # no jump anywhere
    outside = (x.abs() > BOUND)[:, 0]
    assert outside.sum() > 9000 and torch.equal(y[outside], x[outside].detach())
    assert (log_slope[outside] == 0).all()
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert_close(log_slope, grad.log(), atol=1e-9, rtol=1e-9)  # the log-derivative is the derivative's log
    # continuously differentiable: just inside either end the slope is the tails' 1
    ends = torch.tensor([[-BOUND + 1e-9], [BOUND - 1e-9]], dtype=torch.float64)
    rep = lambda t: t.expand(2, 1, t.shape[-1])  # noqa: E731
    assert_close(rational_quadratic(ends, rep(widths), rep(heights), rep(slopes))[1], torch.zeros(2, 1,
                 dtype=torch.float64), atol=1e-5, rtol=0)  # fmt: skip


def test_inverse_returns_the_input_and_minus_the_log_derivative() -> None:
    widths, heights, slopes = params(4000, scale=2.0, seed=2)
    x = torch.randn(4000, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2.5  # tails too
    y, log_slope = rational_quadratic(x, widths, heights, slopes)
    x_back, inverse_log_slope = rational_quadratic(y, widths, heights, slopes, inverse=True)
    assert_close(x_back, x, atol=1e-10, rtol=0)
    assert_close(inverse_log_slope, -log_slope, atol=1e-9, rtol=0)
    assert (x.abs() > BOUND).sum() > 100


def test_a_new_spline_coupling_is_the_identity() -> None:
    layer = SplineCoupling(4, 8).double()
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64) * 2
    y, logdet = layer(x)
    assert_close(y, x, atol=1e-12, rtol=0)
    assert_close(logdet, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert layer.net.conv_out.conv.weight.shape[0] == 2 * (3 * BINS - 1)  # widths, heights, slopes per channel


def test_a_spline_model_trains_and_round_trips() -> None:
    from glowtorch import dequantize
    from glowtorch.train import TrainingObjective

    torch.manual_seed(0)
    config = GlowConfig(image_shape=(1, 8, 8), levels=2, depth=2, hidden_channels=16, coupling="spline")
    model = Glow(config)
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    images[:, :, 2:6, 2:6] = 255  # structure to learn
    x = dequantize(images, 8, generator=torch.Generator().manual_seed(2))
    model.initialize(x)
    objective = TrainingObjective(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = objective(x, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    splines = [m for m in model.modules() if isinstance(m, SplineCoupling)]
    assert len(splines) == 4 and all(s.net.conv_out.conv.weight.abs().max() > 0 for s in splines)
    with torch.no_grad():
        zs, _ = model.double().encode(x.double())
        assert_close(model.decode(zs), x.double(), atol=1e-9, rtol=0)
