"""Likelihood in bits per dimension."""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["bits_per_dim", "nll_bits_per_dim"]


def nll_bits_per_dim(log_p: Tensor, num_dims: int, n_bits: int) -> Tensor:
    """Per-image bits/dim ``(B,)`` of the quantized data from continuous log-densities ``log_p`` ``(B,)``.

    ``bpd = (-log p(x) + D ln(2**n_bits)) / (D ln 2)``: the density of ``x`` in [-0.5, 0.5)^D
    times the bin volume ``2**(-n_bits D)`` bounds the discrete likelihood of the pixels.
    """
    return (-log_p + num_dims * n_bits * math.log(2.0)) / (num_dims * math.log(2.0))


def bits_per_dim(log_p: Tensor, num_dims: int, n_bits: int) -> Tensor:
    """Bits/dim averaged over images (a scalar); see ``nll_bits_per_dim``."""
    return nll_bits_per_dim(log_p, num_dims, n_bits).mean()
