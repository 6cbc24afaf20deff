"""uint8 <-> model space, and the bits/dim arithmetic on cases with a closed-form answer."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from conftest import random_model
from glowtorch import bits_per_dim, dequantize, nll_bits_per_dim, to_uint8
from glowtorch.data import Dataset, step_generator
from glowtorch.evaluate import evaluate_bits_per_dim


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


def test_evaluation_reports_median_and_worst_image() -> None:
    """The exact mean, the median and the worst image equal those of per-image values computed directly."""
    model = random_model(image_shape=(1, 4, 4), scale=0.1).eval()
    generator = torch.Generator().manual_seed(0)
    uint8 = torch.randint(100, 156, (9, 1, 4, 4), generator=generator, dtype=torch.uint8)  # mid-grey images
    uint8[6] = torch.tensor([0, 255]).repeat(8).view(1, 4, 4)  # one high-contrast image, far less likely
    result = evaluate_bits_per_dim(model, Dataset(uint8), batch_size=9, seed=5)
    with torch.no_grad():
        x = dequantize(uint8, 8, generator=step_generator(5, 0, stream=100)).double()
        direct = nll_bits_per_dim(model.log_prob(x), 16, 8)
    assert result["test_worst_image"] == 6 == int(direct.argmax())
    assert result["test_bpd_max"] == pytest.approx(direct.max().item(), rel=1e-9)
    assert result["test_bpd_median"] == pytest.approx(direct.median().item(), rel=1e-9)
    assert result["test_bpd"] == pytest.approx(direct.mean().item(), rel=1e-9)
    assert result["test_bpd"] > result["test_bpd_median"], "the outlier pulls the mean above the median"
