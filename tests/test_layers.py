"""The invertible-layer contract, checked in float64 on every layer with randomized parameters."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from conftest import randomize
from glowtorch.layers import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    FlowStep,
    InvertibleConv1x1,
    InvertibleConv1x1LU,
    ReversePermutation,
    ShufflePermutation,
    Split,
    Squeeze,
    ZeroConv2d,
    gaussian_log_prob,
    random_rotation,
)
from glowtorch.splines import SplineCoupling

LAYERS = {
    "actnorm": lambda c: ActNorm(c),
    "invconv": lambda c: InvertibleConv1x1(c),
    "invconv_lu": lambda c: InvertibleConv1x1LU(c),
    "reverse": lambda c: ReversePermutation(),
    "shuffle": lambda c: ShufflePermutation(c),
    "affine": lambda c: AffineCoupling(c, 8),
    "additive": lambda c: AdditiveCoupling(c, 8),
    "spline": lambda c: SplineCoupling(c, 8),
    "squeeze": lambda c: Squeeze(),
    "step_affine_lu": lambda c: FlowStep(c, 8, "affine", "lu"),
    "step_additive_invconv": lambda c: FlowStep(c, 8, "additive", "invconv"),
    "step_affine_shuffle": lambda c: FlowStep(c, 8, "affine", "shuffle"),
    "step_spline_lu": lambda c: FlowStep(c, 8, SplineCoupling, "lu"),
}


def make(name: str, channels: int) -> torch.nn.Module:
    torch.manual_seed(1)
    return randomize(LAYERS[name](channels).double(), scale=0.3)


def jacobian_logdet(layer, x: torch.Tensor) -> torch.Tensor:
    """log|det J| per sample, from autograd's full Jacobian of one sample at a time."""
    values = []
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: layer(v)[0], x[i : i + 1])
        dim = x[i].numel()
        values.append(torch.linalg.slogdet(jac.reshape(dim, dim))[1])
    return torch.stack(values)


@pytest.mark.parametrize("channels", [4, 5])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_contract(name: str, channels: int) -> None:
    layer = make(name, channels)
    # H != W: a logdet that multiplies by W twice instead of H * W fails here
    x = torch.randn(3, channels, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y, logdet = layer(x)
    assert logdet.shape == (3,)
    assert y.numel() == x.numel() and y.shape[0] == 3
    if name != "squeeze":
        assert y.shape == x.shape
    x_back, inverse_logdet = layer.inverse(y)
    assert_close(x_back, x, atol=1e-10, rtol=0)
    assert_close(logdet + inverse_logdet, torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    assert_close(logdet, jacobian_logdet(layer, x), atol=1e-8, rtol=1e-8)
    if name not in ("reverse", "squeeze", "shuffle"):
        assert not torch.allclose(y.reshape(x.shape), x), "randomized layer should not be the identity"


def test_gaussian_log_prob_is_the_normal_density_summed_per_image() -> None:
    generator = torch.Generator().manual_seed(0)
    z, mean, log_std = (torch.randn(3, 2, 2, 4, dtype=torch.float64, generator=generator) for _ in range(3))
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(z).sum(dim=(1, 2, 3))
    assert_close(gaussian_log_prob(z, mean, log_std), expected, rtol=0, atol=1e-12)


def test_zero_conv_scales_its_output_by_exp_three_log_scale() -> None:
    layer = randomize(ZeroConv2d(3, 5).double(), scale=0.3)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = layer.conv(x) * torch.exp(3.0 * layer.log_scale)
    assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_logdet_is_per_sample() -> None:
    layer = make("affine", 4)
    x = torch.randn(4, 4, 2, 2, dtype=torch.float64)
    _, logdet = layer(x)
    _, logdet_one = layer(x[1:2])
    assert_close(logdet[1:2], logdet_one)
    assert logdet.std() > 0


def test_actnorm_initialization_statistics() -> None:
    layer = ActNorm(3).double()
    x = torch.randn(16, 3, 5, 5, dtype=torch.float64) * torch.tensor([0.1, 2.0, 7.0]).view(1, 3, 1, 1) + 3.0
    assert not bool(layer.initialized)
    layer.initialize(x)
    assert bool(layer.initialized)
    y, _ = layer(x)
    assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    assert_close(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-10, rtol=0)


def test_actnorm_constant_channel_stays_finite() -> None:
    layer = ActNorm(2)
    x = torch.randn(8, 2, 4, 4)
    x[:, 1] = 0.25
    layer.initialize(x)
    y, logdet = layer(x)
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
    assert layer.log_scale[0, 1].item() == 0.0
    assert_close(y[:, 1], torch.zeros_like(y[:, 1]))


def test_lu_and_plain_convolution_agree_for_same_weight() -> None:
    weight = random_rotation(6) @ torch.diag(torch.linspace(0.5, 2.0, 6, dtype=torch.float64))
    plain = InvertibleConv1x1(6, weight).double()
    lu = InvertibleConv1x1LU(6, weight).double()
    assert_close(lu.weight_matrix(), weight, atol=1e-12, rtol=0)
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    y_plain, logdet_plain = plain(x)
    y_lu, logdet_lu = lu(x)
    assert_close(y_lu, y_plain, atol=1e-12, rtol=0)
    assert_close(logdet_lu, logdet_plain, atol=1e-12, rtol=0)
    expected = 9 * torch.linalg.slogdet(weight)[1]
    assert_close(logdet_lu, expected.expand(2), atol=1e-12, rtol=0)


def test_shuffle_order_is_saved_state() -> None:
    a, b = ShufflePermutation(8), ShufflePermutation(8)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, 2, 2)
    assert_close(a(x)[0], b(x)[0])
    assert "order" in a.state_dict()


def test_coupling_network_starts_at_zero() -> None:
    """Additive couplings start as the identity; affine ones as the constant scale sigmoid(2) (reference code)."""
    x = torch.randn(2, 4, 3, 3)
    y, logdet = AdditiveCoupling(4, 16)(x)
    assert_close(y, x)
    assert_close(logdet, torch.zeros(2))
    affine = AffineCoupling(4, 16)
    assert_close(affine.net(x[:, :2]), torch.zeros(2, 4, 3, 3))
    y, logdet = affine(x)
    scale = torch.sigmoid(torch.tensor(2.0))
    assert_close(y, torch.cat([x[:, :2], x[:, 2:] * scale], 1))
    assert_close(logdet, torch.full((2,), 18 * torch.log(scale).item()))


def test_affine_scale_is_sigmoid_of_h_plus_two() -> None:
    layer = AffineCoupling(4, 8).double()
    with torch.no_grad():
        layer.net.conv_out.conv.bias.copy_(torch.tensor([0.3, -1.0, 0.7, 0.5], dtype=torch.float64))
    x = torch.zeros(1, 4, 1, 1, dtype=torch.float64)
    x[0, 2:] = 1.0
    y, logdet = layer(x)
    scale = torch.sigmoid(torch.tensor([-1.0 + 2, 0.5 + 2], dtype=torch.float64))
    assert_close(y[0, 2:, 0, 0], (1.0 + torch.tensor([0.3, 0.7], dtype=torch.float64)) * scale)
    assert_close(logdet, torch.log(scale).sum().view(1))


def test_split_prior_starts_standard_normal() -> None:
    split = Split(6)
    kept, z = split.split(torch.randn(2, 6, 4, 4))
    assert kept.shape == (2, 3, 4, 4) and z.shape == (2, 3, 4, 4)
    mean, log_std = split.prior(kept)
    assert_close(mean, torch.zeros_like(z))
    assert_close(log_std, torch.zeros_like(z))
    assert torch.equal(split.merge(kept, z), torch.cat([kept, z], 1))


def test_squeeze_moves_2x2_blocks_to_channels() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y, _ = Squeeze()(x)
    assert y.shape == (1, 4, 2, 2)
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]


@pytest.mark.parametrize("cls", [InvertibleConv1x1, InvertibleConv1x1LU])
def test_inverse_weight_cache_follows_parameter_updates(cls) -> None:
    layer = randomize(cls(4).double(), scale=0.3)
    y = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        first = layer.inverse(y)[0]
        assert layer.inverse_matrix() is layer.inverse_matrix(), "cached without autograd"
        for p in layer.parameters():
            p.add_(0.1)
        second = layer.inverse(y)[0]
    assert not torch.allclose(first, second), "an in-place update invalidates the cache"
    assert_close(layer(second)[0], y, atol=1e-10, rtol=0)
    layer.float()
    with torch.no_grad():
        assert layer.inverse(y.float())[0].dtype == torch.float32
