"""Variational dequantization (Ho et al. 2019, Flow++): a learned noise distribution q(u | x) inside each
pixel's bin, in place of the uniform one.

A flow model has a density ``p`` on continuous inputs; the images are integers ``k`` (each pixel reduced to
``n_bits``). Any density ``q(u | k)`` on the unit cube ``[0, 1)^D`` gives the bound

    -log P(k) <= E_{u ~ q}[-log p((k + u) / 2**n_bits - 0.5) + log q(u | k)] + D n_bits log 2,

uniform dequantization being ``q = 1``. The closer ``q`` is to the model's own density inside the bin, the
tighter the bound, and a jointly trained ``q`` lets the flow stop spending capacity on flat bins.

``q`` here: standard logistic ``eps = logit(v)`` from the same uniform draws ``v`` as uniform
dequantization, an affine coupling flow on a checkerboard conditioned on features of the image, then a
sigmoid onto ``(0, 1)``. Its log-density is exact: the logistic log-density of ``eps`` minus the couplings'
log-determinants minus the sigmoid's. Flow++ starts from a Gaussian; the logistic start makes a new ``q``
(its couplings start as the identity) exactly the uniform dequantization, ``u = sigmoid(logit(v)) = v``,
so training starts from the uniform model's objective; and it keeps the importance weights
``p / q`` from the heavy tails a Gaussian start gives at the bins' edges (where its density vanishes
faster than any power). ``q`` is used only for likelihoods (training and scoring); sampling, encoding
and decoding never see it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DEQUANTIZATIONS", "CheckerboardCoupling", "VariationalDequantizer", "logistic_from_uniform"]

DEQUANTIZATIONS = ("uniform", "variational")

# Half of float32's spacing just below 1: uniform draws v in [0, 1) on float32's grid map to v + HALF_STEP,
# strictly inside (0, 1), so the logit is finite for every draw.
HALF_STEP = 2.0**-25


def logistic_from_uniform(v: Tensor) -> Tensor:
    """Standard logistic values from uniform draws ``v`` in [0, 1) (any shape): ``logit(v + 2**-25)``,
    computed in float64 and returned in ``v``'s dtype (finite for every float32 draw)."""
    inside = v.double() + HALF_STEP
    return (torch.log(inside) - torch.log1p(-inside)).to(v.dtype)


def logistic_log_prob(eps: Tensor) -> Tensor:
    """``(B,)`` standard logistic log-density of ``eps`` ``(B, C, H, W)``: ``log sigmoid(e) + log sigmoid(-e)``
    summed (the sigmoid's own log-derivative, so a bare sigmoid of logistic ``eps`` has log-density 0)."""
    return (F.logsigmoid(eps) + F.logsigmoid(-eps)).sum((1, 2, 3))


def checkerboard(height: int, width: int, parity: int, like: Tensor) -> Tensor:
    """``(1, 1, H, W)`` mask: 1 where ``(i + j) % 2 == parity``, in ``like``'s dtype and device."""
    rows = torch.arange(height, device=like.device).view(-1, 1)
    cols = torch.arange(width, device=like.device).view(1, -1)
    return ((rows + cols) % 2 == parity).to(like.dtype).view(1, 1, height, width)


class CheckerboardCoupling(nn.Module):
    """Affine coupling on a checkerboard, conditioned on features ``h``: the cells of one parity pass
    through and, with ``h``, set a shift and a log-scale for the others.

    ``forward(eps, h) -> (eps', logdet)`` with ``eps`` ``(B, C, H, W)``, ``h`` ``(B, F, H, W)`` and ``logdet``
    ``(B,)``; ``inverse(eps', h)`` undoes it. The log-scale is ``2 tanh(raw / 2)`` (within (-2, 2)), and the
    last convolution starts at zero: a new coupling is the identity.
    """

    def __init__(self, channels: int, features: int, hidden: int, parity: int) -> None:
        super().__init__()
        self.parity = parity
        self.net = nn.Sequential(
            nn.Conv2d(channels + features, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _params(self, eps: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """(shift, log-scale), each zero on the cells that pass through."""
        kept = checkerboard(eps.shape[2], eps.shape[3], self.parity, eps)
        shift, raw = self.net(torch.cat([eps * kept, h], 1)).chunk(2, 1)
        changed = 1.0 - kept
        return shift * changed, 2.0 * torch.tanh(raw / 2.0) * changed

    def forward(self, eps: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._params(eps, h)
        return eps * torch.exp(log_scale) + shift, log_scale.sum((1, 2, 3))

    def inverse(self, y: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        # The kept cells are unchanged, so the network sees the same input as in forward.
        shift, log_scale = self._params(y, h)
        return (y - shift) * torch.exp(-log_scale), -log_scale.sum((1, 2, 3))


class VariationalDequantizer(nn.Module):
    """``q(u | k)``: dequantization noise ``u`` in (0, 1) per pixel given the image's bins ``k``.

    ``forward(x, noise) -> (x', log_q)``: ``x`` ``(B, C, H, W)`` are uniformly dequantized inputs
    ``(k + noise) / 2**n_bits - 0.5`` made from ``noise`` in [0, 1) (``glowtorch.dequantize``); ``x'`` are
    ``(k + u) / 2**n_bits - 0.5`` with ``u`` drawn from ``q`` by the same ``noise``, and ``log_q`` ``(B,)``
    is ``log q(u | k)``, a density on the unit cube (0 for uniform dequantization). Reparameterized:
    gradients reach ``q``'s parameters through ``x'`` and ``log_q``.
    """

    def __init__(self, channels: int, n_bits: int, hidden: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.n_bits = n_bits
        self.features = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
        )
        self.couplings = nn.ModuleList(CheckerboardCoupling(channels, hidden, hidden, i % 2) for i in range(depth))

    def bins(self, x: Tensor, noise: Tensor) -> Tensor:
        """The integer bins ``k`` ``(B, C, H, W)`` (as floats) of uniformly dequantized ``x`` made with
        ``noise``: ``(x + 0.5) 2**n_bits - noise`` is ``k`` up to float rounding, far below 0.5."""
        return torch.round((x + 0.5) * 2**self.n_bits - noise.to(x.dtype))

    def sample(self, k: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """``u`` ``(B, C, H, W)`` in (0, 1) drawn from ``q(. | k)`` by uniform ``noise``, and ``log q(u | k)``
        ``(B,)``."""
        eps = logistic_from_uniform(noise.to(k.dtype))
        log_q = logistic_log_prob(eps)
        h = self.features((k + 0.5) / 2**self.n_bits * 2.0 - 1.0)  # the bins' centres in [-1, 1]
        s = eps
        for coupling in self.couplings:
            s, logdet = coupling(s, h)
            log_q = log_q - logdet
        # u = sigmoid(s): du/ds = sigmoid(s) sigmoid(-s)
        log_q = log_q - logistic_log_prob(s)
        return torch.sigmoid(s), log_q

    def forward(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        k = self.bins(x, noise)
        u, log_q = self.sample(k, noise)
        # In the bin: a sigmoid that saturates to 1, or k + u rounded up, would land on the next bin's edge.
        top = torch.nextafter((k + 1) / 2**self.n_bits - 0.5, torch.full_like(k, -1.0))
        return torch.minimum((k + u) / 2**self.n_bits - 0.5, top), log_q
