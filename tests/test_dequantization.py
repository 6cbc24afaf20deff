"""Variational dequantization and the importance-weighted bound: q's log-density against float64 autograd
Jacobians, the bound against an exact integral of a tiny model's density over each pixel's bin, and the
importance-weighted figure's order (never above the one-sample bound, falling as K grows)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import logistic

from conftest import randomize
from glowtorch import Glow, GlowConfig, dequantize
from glowtorch.dequantization import CheckerboardCoupling, VariationalDequantizer, logistic_from_uniform
from glowtorch.evaluate import importance_weighted_bits, score_images
from glowtorch.train import TrainingObjective

torch.set_default_dtype(torch.float32)


def jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det d fn(x) / dx| of one image ``x`` ``(C, H, W)`` by autograd, in float64."""
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.view(1, *x.shape)).flatten(), x.flatten())
    return torch.linalg.slogdet(jac)[1]


def test_logistic_draws_are_the_logistic_quantiles_and_finite_at_the_ends() -> None:
    v = torch.tensor([0.0, 0.025, 0.5, 0.975, 1.0 - 2.0**-24])
    eps = logistic_from_uniform(v)
    expected = logistic.ppf(v.double().numpy() + 2.0**-25)
    assert torch.allclose(eps.double(), torch.from_numpy(expected), rtol=1e-6, atol=1e-6)
    assert torch.isfinite(eps).all() and eps[0] < -17 < 16 < eps[-1] and abs(eps[2]) < 1e-6
    assert abs(eps[1] - math.log(0.025 / 0.975)) < 1e-5  # the 2.5% quantile


def test_a_checkerboard_coupling_is_exact_and_inverts() -> None:
    torch.manual_seed(0)
    coupling = randomize(CheckerboardCoupling(2, 3, 8, parity=1).double(), scale=0.3)
    h = torch.randn(1, 3, 4, 6, dtype=torch.float64)  # H != W: the checkerboard's rows and columns differ
    eps = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    y, logdet = coupling(eps, h)
    assert torch.allclose(logdet[0], jacobian_logdet(lambda v: coupling(v, h)[0], eps[0]), atol=1e-10)
    back, inverse_logdet = coupling.inverse(y, h)
    assert torch.allclose(back, eps, atol=1e-12) and torch.allclose(inverse_logdet, -logdet, atol=1e-12)
    kept = (torch.arange(4).view(-1, 1) + torch.arange(6)) % 2 == 1  # parity 1 passes through
    assert torch.equal(y[..., kept], eps[..., kept]) and not torch.allclose(y[..., ~kept], eps[..., ~kept])
    fresh = CheckerboardCoupling(2, 3, 8, parity=0).double()
    assert torch.equal(fresh(eps, h)[0], eps) and fresh(eps, h)[1].abs().max() == 0  # identity at init
    # the log-scale by hand: a last convolution that outputs a constant raw value r gives 2 tanh(r / 2)
    with torch.no_grad():
        fresh.net[-1].bias.copy_(torch.tensor([0.0, 0.0, 3.0, -1.0], dtype=torch.float64))  # shifts, then raws
    y0, logdet0 = fresh(eps, h)
    changed = ~((torch.arange(4).view(-1, 1) + torch.arange(6)) % 2 == 0)
    scale = torch.tensor([2 * math.tanh(1.5), 2 * math.tanh(-0.5)], dtype=torch.float64).exp().view(1, 2, 1)
    assert torch.allclose(y0[..., changed], eps[..., changed] * scale, atol=1e-12)
    assert math.isclose(logdet0.item(), 12 * (2 * math.tanh(1.5) + 2 * math.tanh(-0.5)), rel_tol=1e-12)


def test_q_alternates_the_checkerboard_parity() -> None:
    q = VariationalDequantizer(1, 8, hidden=4, depth=5)
    assert [c.parity for c in q.couplings] == [0, 1, 0, 1, 0]


@pytest.mark.parametrize("n_bits", [8, 3])
def test_q_density_is_the_gaussian_through_the_exact_jacobian(n_bits: int) -> None:
    """log q(u | k) = log Logistic(eps) - log|det du/deps|, the Jacobian of the whole map by autograd."""
    torch.manual_seed(1)
    q = randomize(VariationalDequantizer(2, n_bits, hidden=6, depth=3).double(), scale=0.3)
    k = torch.randint(0, 2**n_bits, (1, 2, 4, 4)).double()
    noise = torch.rand(1, 2, 4, 4, dtype=torch.float64)
    u, log_q = q.sample(k, noise)
    eps = logistic_from_uniform(noise)

    def eps_to_u(e: torch.Tensor) -> torch.Tensor:
        s = e
        h = q.features((k + 0.5) / 2**n_bits * 2 - 1)
        for coupling in q.couplings:
            s = coupling(s, h)[0]
        return torch.sigmoid(s)

    assert torch.allclose(eps_to_u(eps), u, atol=1e-12)
    base = float(logistic.logpdf(eps.numpy()).sum())
    assert torch.allclose(log_q[0], base - jacobian_logdet(eps_to_u, eps[0]), atol=1e-9)


def test_a_new_q_is_the_uniform_dequantization() -> None:
    """Its couplings start as the identity: u = sigmoid(logit(v)) = v and log q = 0."""
    q = VariationalDequantizer(3, 8).double()
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    noise = torch.rand(4, 3, 5, 5, dtype=torch.float64)
    x = dequantize(images, 8, noise=noise, dtype=torch.float64)
    redrawn, log_q = q(x, noise)
    assert torch.allclose(redrawn, x, atol=1e-12) and log_q.abs().max() < 1e-9


def test_the_dequantized_inputs_stay_in_their_bins() -> None:
    torch.manual_seed(2)
    q = randomize(VariationalDequantizer(1, 5, hidden=4, depth=2), scale=2.0)  # strongly non-uniform
    images = torch.randint(0, 256, (64, 1, 6, 6), dtype=torch.uint8)
    noise = torch.rand(64, 1, 6, 6)
    noise[0, 0, 0, :3] = torch.tensor([0.0, 1.0 - 2.0**-24, 0.5])  # the extreme draws
    x = dequantize(images, 5, noise=noise)
    bins = torch.div(images, 8, rounding_mode="floor").float()
    assert torch.equal(q.bins(x, noise), bins)  # the bins come back exactly from x and its draws
    redrawn, log_q = q(x, noise)
    below, above = bins / 32 - 0.5, (bins + 1) / 32 - 0.5  # the bin's edges in model space
    assert (redrawn >= below).all() and (redrawn < above).all() and torch.isfinite(log_q).all()
    assert (redrawn == torch.nextafter(above, below)).any()  # a saturated sigmoid, kept inside
    assert not torch.allclose(redrawn, x)  # q is not the uniform draw


def _tiny(dequantization: str, seed: int) -> Glow:
    """A float64 Glow of 1x2x2 images with 1 bit per pixel (D = 4, 16 possible images), random weights."""
    config = GlowConfig(image_shape=(1, 2, 2), levels=1, depth=2, hidden_channels=8, n_bits=1,
                        dequantization=dequantization, dequantizer_channels=4, dequantizer_depth=2)  # fmt: skip
    torch.manual_seed(seed)
    model = randomize(Glow(config).double(), scale=0.4, seed=seed).eval()
    if dequantization == "variational":  # a milder q: near the flow's own density in each bin, yet not uniform
        with torch.no_grad():
            for parameter in model.dequantizer.parameters():
                parameter.mul_(0.4)
    return model


def _exact_bits(model: Glow, image: torch.Tensor, points: int = 16) -> float:
    """-log2 P(k) / D for the 1-bit 1x2x2 ``image`` (uint8), P(k) the model's density integrated over k's bin
    by the midpoint rule (``points`` per dimension): independent of any dequantization code."""
    k = torch.div(image, 128, rounding_mode="floor").double().flatten()
    grid = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    u = torch.tensor(list(itertools.product(grid.tolist(), repeat=4)), dtype=torch.float64)
    y = ((k + u) / 2 - 0.5).view(-1, 1, 2, 2)
    with torch.no_grad():
        log_p = model.log_prob(y)
    log_mass = torch.logsumexp(log_p, 0) - math.log(len(u)) + 4 * math.log(0.5)  # mean density x bin volume
    return float(-log_mass / (4 * math.log(2)))


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_the_bounds_against_the_exact_probability_of_each_image(dequantization: str) -> None:
    """For every one of the 16 images: the mean one-sample bound is above -log2 P(k) / D (up to Monte Carlo
    error), and the importance-weighted bound over many draws converges to it."""
    model = _tiny(dequantization, seed=3)
    images = torch.tensor(list(itertools.product([0, 255], repeat=4)), dtype=torch.uint8).view(16, 1, 2, 2)
    exact = torch.tensor([_exact_bits(model, image) for image in images], dtype=torch.float64)
    assert 0 < (2.0 ** (-4 * exact)).sum() <= 1  # the density's mass on [-0.5, 0.5)^4
    scores = score_images(model, images, draws=400, seed=5)
    gap = scores.bits_per_dim - exact
    assert (gap > -0.01).all() and gap.mean() > 0.002  # above, by the KL of q from the posterior in the bin
    error = scores.importance_weighted - exact  # Monte Carlo error of 400 draws, either sign
    assert error.abs().max() < 0.04 and abs(error.mean()) < 0.006
    assert (scores.importance_weighted <= scores.bits_per_dim + 1e-12).all()


def test_importance_weighting_can_only_go_down_as_k_grows() -> None:
    """From the same draws, grouped in nested halves: the mean over groups of the K-sample bound never
    rises when K doubles (log is concave), and at K = 1 it is the one-sample bound itself."""
    model = _tiny("variational", seed=4)
    images = torch.tensor([[0, 255, 255, 0], [255, 255, 255, 0], [0, 0, 0, 255]], dtype=torch.uint8).view(3, 1, 2, 2)
    per_draw = torch.stack([score_images(model, images, seed=s).bits_per_dim for s in range(64)])  # (64, 3)
    figures = []
    for k in (1, 2, 4, 8, 16, 32, 64):
        groups = per_draw.view(64 // k, k, 3).transpose(0, 1)  # (K, groups, 3): consecutive draws together
        figures.append(importance_weighted_bits(groups.reshape(k, -1), 4).view(-1, 3).mean(0))
    assert torch.allclose(figures[0], per_draw.mean(0), atol=1e-12)
    for smaller, larger in itertools.pairwise(figures):
        assert (larger <= smaller + 1e-12).all()
    assert (figures[-1] < figures[0] - 1e-3).all()  # and it does go down
    both = score_images(model, images, draws=64, seed=0)
    assert (both.importance_weighted < both.bits_per_dim).all()


def test_a_variational_model_trains_q_and_keeps_its_sampling_exact() -> None:
    torch.manual_seed(6)
    config = GlowConfig(image_shape=(1, 4, 4), levels=1, depth=2, hidden_channels=8, dequantization="variational")
    model = Glow(config)
    images = torch.randint(0, 256, (32, 1, 4, 4), dtype=torch.uint8)
    noise = torch.rand(32, 1, 4, 4)
    x = dequantize(images, 8, noise=noise)
    model.initialize(x)
    objective = TrainingObjective(model)
    with pytest.raises(ValueError, match="pass noise"):
        objective(x)
    randomize(model.dequantizer, scale=0.1)  # a fresh q's last convolutions are zero: nothing before them learns
    loss, per_image = objective(x, noise=noise)
    redrawn, log_q = model.dequantized(x, noise)
    expected = (-(model.log_prob(redrawn) - log_q) / 16 + 8 * math.log(2)) / math.log(2)
    assert torch.allclose(per_image, expected.detach(), atol=1e-5) and torch.allclose(loss, expected.mean())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.dequantizer.parameters())
    with torch.no_grad():  # sampling and the round trip never touch q
        zs, _ = model.encode(x)
        assert torch.allclose(model.decode(zs), x, atol=1e-5)
        assert model.sample(4, 0.7).shape == (4, 1, 4, 4)


def test_a_uniform_model_has_no_dequantizer_and_the_same_parameters() -> None:
    base = dict(image_shape=(1, 4, 4), levels=1, depth=2, hidden_channels=8)
    uniform, variational = Glow(GlowConfig(**base)), Glow(GlowConfig(**base, dequantization="variational"))
    names = [name for name, _ in uniform.named_parameters()]
    assert not any("dequantizer" in name for name in names)
    assert [name for name, _ in variational.named_parameters()][: len(names)] == names  # q's come last
    x = torch.rand(3, 1, 4, 4) - 0.5
    assert torch.equal(uniform.dequantized(x, torch.rand(3, 1, 4, 4))[0], x)
    assert GlowConfig.from_dict({k: v for k, v in GlowConfig(**base).to_dict().items()
                                 if not k.startswith("dequantiz")}).dequantization == "uniform"  # fmt: skip
    with pytest.raises(ValueError, match="dequantization must be one of"):
        GlowConfig(**base, dequantization="gaussian")
    with pytest.raises(ValueError, match="dequantizer_depth must be >= 1"):
        GlowConfig(**base, dequantizer_depth=0)


def test_train_and_evaluate_a_variational_model_from_the_command_line(tmp_path, capsys) -> None:
    from glowtorch import load_model
    from glowtorch.cli import main
    from test_cli import TINY

    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--steps", "6", "--out", str(out), "--dequantization", "variational",
            "--dequantizer-channels", "4", "--dequantizer-depth", "2", "--precision", "float32", *TINY]  # fmt: skip
    assert main(argv) == 0
    model = load_model(out)
    assert model.config.dequantization == "variational" and model.config.dequantizer_depth == 2
    assert len(model.dequantizer.couplings) == 2
    capsys.readouterr()
    assert main(["evaluate", str(out), "--dataset", "digits", "--importance-samples", "3", "--no-progress"]) == 0
    text = capsys.readouterr().out
    one_draw = float(text.split(" bits/dim")[0].split()[-1])
    weighted = float(text.split("importance-weighted over the 3 draws: ")[1].split()[0])
    assert "3 draw(s)" in text and weighted <= one_draw
    with pytest.raises(SystemExit):  # one or the other
        main(["evaluate", str(out), "--dataset", "digits", "--importance-samples", "3", "--draws", "2"])


def test_a_fitted_class_prior_of_a_variational_model_fits_the_inputs_q_gives_the_flow() -> None:
    """fit_class_prior dequantizes as the model's likelihoods do: by q(u | x), whose outputs the flow was
    trained on. Fitted to uniformly dequantized inputs instead, the prior sits where the flow puts inputs it
    never sees, and the test bits/dim of a trained variational model rose (1.2098 -> 1.3130 on MNIST)."""
    from glowtorch.train import fit_class_prior

    torch.manual_seed(0)
    config = GlowConfig(image_shape=(1, 4, 4), levels=1, depth=2, hidden_channels=8, num_classes=3,
                        class_prior="spatial", dequantization="variational", dequantizer_channels=8)  # fmt: skip
    model = randomize(Glow(config).double(), scale=0.5)
    labels = torch.arange(60) % 3
    pixels = torch.randint(0, 256, (60, 1, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    noise = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(5))  # fit_class_prior's draws, seed 5
    uniform = dequantize(pixels, 8, noise=noise).double()
    with torch.no_grad():
        x, log_q = model.dequantized(uniform, noise.double())
        assert log_q.abs().min() > 1e-3  # q is not the uniform density here
        top = model.encode(x, labels)[0][-1]
        other = model.encode(uniform, labels)[0][-1]
        fit_class_prior(model, pixels, labels, batch_size=60, seed=5)
        mean, log_std = model.top_prior_params(60, labels)
    for c in range(3):
        assert torch.allclose(mean[labels == c][0], top[labels == c].mean(0), atol=1e-9)
        std = top[labels == c].std(0, correction=0).clamp_min(1e-6)  # the fit's floor on the variance: 1e-12
        assert torch.allclose(log_std[labels == c][0].exp(), std, atol=1e-9)
        assert not torch.allclose(mean[labels == c][0], other[labels == c].mean(0), atol=1e-3)
