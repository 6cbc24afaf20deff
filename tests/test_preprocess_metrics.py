"""uint8 <-> model space, and the bits/dim arithmetic on cases with a closed-form answer."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from glowtorch import bits_per_dim, dequantize, nll_bits_per_dim, to_uint8


@pytest.mark.parametrize("n_bits", [1, 5, 8])
def test_dequantize_range_and_roundtrip(n_bits: int) -> None:
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = dequantize(pixels, n_bits, generator=torch.Generator().manual_seed(0))
    assert x.min() >= -0.5 and x.max() < 0.5
    reduced = (pixels // 2 ** (8 - n_bits)) * 2 ** (8 - n_bits)
    assert torch.equal(to_uint8(x, n_bits), reduced)
    assert torch.equal(to_uint8(dequantize(pixels, n_bits, noise=False), n_bits), reduced)


def test_dequantize_formula() -> None:
    pixels = torch.tensor([0, 128, 255], dtype=torch.uint8)
    assert_close(dequantize(pixels, 8, noise=False), (torch.tensor([0.0, 128, 255]) + 0.5) / 256 - 0.5)
    assert_close(dequantize(pixels, 5, noise=False), (torch.tensor([0.0, 16, 31]) + 0.5) / 32 - 0.5)
    with pytest.raises(ValueError, match="uint8"):
        dequantize(pixels.float())


def test_uniform_density_is_n_bits_per_dim() -> None:
    """A uniform density on [-0.5, 0.5)^D has log p = 0: exactly n_bits bits per dimension."""
    log_p = torch.zeros(4)
    assert_close(bits_per_dim(log_p, 784, 8), torch.tensor(8.0))
    assert_close(bits_per_dim(log_p, 10, 5), torch.tensor(5.0))


def test_standard_normal_bits_per_dim() -> None:
    """x = 0 under N(0, I): -log p = D/2 log(2 pi), so bpd = n_bits + log2(2 pi)/2."""
    dims = 12
    log_p = torch.full((3,), -0.5 * dims * math.log(2 * math.pi))
    expected = 8 + 0.5 * math.log2(2 * math.pi)
    assert_close(nll_bits_per_dim(log_p, dims, 8), torch.full((3,), expected))


def test_bits_per_dim_averages_over_images() -> None:
    log_p = torch.tensor([0.0, -10 * math.log(2.0)])  # 0 and 10 extra bits over 10 dims
    assert_close(nll_bits_per_dim(log_p, 10, 8), torch.tensor([8.0, 9.0]))
    assert_close(bits_per_dim(log_p, 10, 8), torch.tensor(8.5))
