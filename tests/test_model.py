"""The multi-scale model: exactness in float64 with randomized parameters, priors, sampling, API checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from conftest import images, random_model, randomize, tiny_config
from glowtorch import Glow, GlowConfig, NotInitializedError
from glowtorch.layers import gaussian_log_prob

VARIANTS = [
    dict(coupling="affine", permutation="lu"),
    dict(coupling="additive", permutation="invconv"),
    dict(coupling="affine", permutation="shuffle"),
    dict(coupling="affine", permutation="reverse", learn_top=False),
    dict(coupling="affine", permutation="lu", num_classes=3),
    dict(coupling="affine", permutation="lu", num_classes=3, class_prior="spatial"),
    dict(coupling="affine", permutation="lu", levels=1, image_shape=(1, 2, 2)),
    dict(coupling="affine", permutation="lu", levels=3, image_shape=(3, 8, 8), depth=1),
    dict(coupling="spline", permutation="lu"),
]


def labels_for(model: Glow, batch: int):
    return torch.arange(batch) % model.config.num_classes if model.config.num_classes else None


def flat(zs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([z.flatten(1) for z in zs], 1)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_model_is_exactly_invertible_and_logdet_matches_jacobian(variant: dict) -> None:
    model = random_model(**variant)
    x = images(2, model.config.image_shape)
    y = labels_for(model, 2)
    zs, logdet = model.encode(x, y)
    assert [tuple(z.shape[1:]) for z in zs] == model.latent_shapes
    assert flat(zs).shape[1] == model.config.num_dims
    assert logdet.shape == (2,)
    assert_close(model.decode(zs, y), x, atol=1e-10, rtol=0)
    for i in range(2):
        y_i = None if y is None else y[i : i + 1]
        jac = torch.autograd.functional.jacobian(lambda v, y_i=y_i: flat(model.encode(v, y_i)[0]), x[i : i + 1])
        dim = model.config.num_dims
        assert_close(logdet[i], torch.linalg.slogdet(jac.reshape(dim, dim))[1], atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("variant", VARIANTS[:5], ids=str)
def test_log_prob_is_prior_terms_plus_logdet(variant: dict) -> None:
    """Independent route: each level's prior input is rebuilt by decoding the coarser latents."""
    model = random_model(**variant)
    x = images(3, model.config.image_shape)
    y = labels_for(model, 3)
    zs, logdet = model.encode(x, y)
    expected = logdet + gaussian_log_prob(zs[-1], *model.top_prior_params(3, y))
    h = zs[-1]
    for level in reversed(range(model.config.levels - 1)):
        h, _ = model.levels[level + 1].inverse(h)
        h, _ = model.squeeze.inverse(h)
        expected = expected + gaussian_log_prob(zs[level], *model.splits[level].prior(h))
        h = torch.cat([h, zs[level]], 1)
    assert_close(model.log_prob(x, y), expected, atol=1e-10, rtol=1e-12)


def test_log_prob_with_standard_normal_priors() -> None:
    model = random_model(learn_top=False)
    with torch.no_grad():
        model.top_prior.zero_()
        for split in model.splits:
            split.prior_net.conv.weight.zero_()
            split.prior_net.conv.bias.zero_()
    x = images(2)
    zs, logdet = model.encode(x)
    z = flat(zs)
    expected = -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi) + logdet
    assert_close(model.log_prob(x), expected)


def test_initialize_normalizes_first_actnorm_output() -> None:
    torch.manual_seed(0)
    model = Glow(tiny_config())
    x = images(64, dtype=torch.float32) * 0.3 + 0.1
    model.initialize(x)
    assert model.is_initialized
    h, _ = model.squeeze(x)
    out, _ = model.levels[0].layers[0].actnorm(h)
    assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(8), atol=1e-5, rtol=0)
    assert_close(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(8), atol=1e-4, rtol=0)
    assert torch.isfinite(model.log_prob(x)).all()


def test_uninitialized_model_refuses_to_encode() -> None:
    model = Glow(tiny_config())
    x = images(2, dtype=torch.float32)
    with pytest.raises(NotInitializedError, match="initialize"):
        model.log_prob(x)
    with pytest.raises(NotInitializedError):
        model.sample(2)
    assert not model.is_initialized


def test_works_in_float32_and_float64() -> None:
    torch.manual_seed(0)
    model = Glow(tiny_config())
    x32 = images(4, dtype=torch.float32)
    model.initialize(x32)
    randomize(model, scale=0.05)
    lp32 = model.log_prob(x32)
    assert lp32.dtype == torch.float32
    model.double()
    lp64 = model.log_prob(x32.double())
    assert lp64.dtype == torch.float64
    assert_close(lp32.double(), lp64, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_shape=(1, 6, 8), levels=2), "divisible by 2\\*\\*levels = 4"),
        (dict(coupling="cubic"), "coupling must be one of"),
        (dict(permutation="random"), "permutation must be one of"),
        (dict(depth=0), "depth must be >= 1"),
        (dict(n_bits=9), "n_bits"),
        (dict(image_shape=(1, 8)), "image_shape"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


def test_any_channel_count() -> None:
    for channels in (1, 3, 5):
        model = random_model(scale=0.1, image_shape=(channels, 4, 4))
        x = images(2, (channels, 4, 4))
        assert_close(model.decode(model.encode(x)[0]), x, atol=1e-10, rtol=0)


def test_wrong_input_shapes_raise() -> None:
    model = random_model()
    with pytest.raises(ValueError, match="expected images of shape"):
        model.log_prob(images(2, (3, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        model.log_prob(torch.full((1, 2, 4, 4), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="glowtorch.dequantize"):  # pixels passed as they are
        model.log_prob((images(2) * 255 + 128).to(torch.uint8))
    with pytest.raises(ValueError, match="must lie in"):  # initialization wants data in the model's range
        model.initialize(images(2) * 255)
    zs, _ = model.encode(images(2))
    with pytest.raises(ValueError, match="latent 0"):
        model.decode([zs[0][:, :1], zs[1]])
    with pytest.raises(ValueError, match="one per level"):
        model.decode(zs[:1])


def test_sampling_shapes_finite_and_reproducible() -> None:
    model = random_model(scale=0.05)
    a = model.sample(5, temperature=0.7, generator=torch.Generator().manual_seed(3))
    b = model.sample(5, temperature=0.7, generator=torch.Generator().manual_seed(3))
    c = model.sample(5, temperature=0.7, generator=torch.Generator().manual_seed(4))
    assert a.shape == (5, 2, 4, 4)
    assert torch.isfinite(a).all()
    assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c)


def test_temperature_scales_latent_deviation_from_prior_mean() -> None:
    model = random_model()
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    zs_one, _ = model.sample_with_latents(4, 1.0, generator=gen())
    zs_half, _ = model.sample_with_latents(4, 0.5, generator=gen())
    zs_zero, _ = model.sample_with_latents(4, 0.0, generator=gen())
    # Top latent: same noise, mean fixed, so deviation halves exactly.
    mean_top, log_std_top = model.top_prior_params(4, None)
    assert_close(zs_half[-1] - mean_top, 0.5 * (zs_one[-1] - mean_top))
    assert_close(zs_zero[-1], mean_top)
    eps = (zs_one[-1] - mean_top) / torch.exp(log_std_top)
    assert eps.std() > 0.3

    # Finer level: with the same noise, the deviation from its own conditional mean, in units of its own
    # std, at T=0.5 is exactly half that at T=1 (the conditional mean moves with the top latent).
    def standardized_fine(zs: list[torch.Tensor]) -> torch.Tensor:
        kept = model.squeeze.inverse(model.levels[1].inverse(zs[-1])[0])[0]
        mean, log_std = model.splits[0].prior(kept)
        return (zs[0] - mean) / torch.exp(log_std)

    noise = standardized_fine(zs_one)
    assert noise.std() > 0.3
    assert_close(standardized_fine(zs_half), 0.5 * noise, rtol=0, atol=1e-10)
    assert_close(standardized_fine(zs_zero), torch.zeros_like(noise), rtol=0, atol=1e-10)


def test_per_level_temperatures() -> None:
    model = random_model()
    zs, _ = model.sample_with_latents(3, [0.0, 1.0], generator=torch.Generator().manual_seed(0))
    kept = model.squeeze.inverse(model.levels[1].inverse(zs[-1])[0])[0]
    mean, _ = model.splits[0].prior(kept)
    assert_close(zs[0], mean)
    assert not torch.allclose(zs[-1], model.top_prior_params(3, None)[0])
    with pytest.raises(ValueError, match="one temperature per level"):
        model.sample(2, [0.5])
    with pytest.raises(ValueError, match=">= 0"):
        model.sample(2, -0.1)


def test_class_conditional_model() -> None:
    model = random_model(num_classes=4)
    x = images(3)
    lp0 = model.log_prob(x, torch.zeros(3, dtype=torch.long))
    lp1 = model.log_prob(x, torch.ones(3, dtype=torch.long))
    assert not torch.allclose(lp0, lp1)
    assert model.classify(x).shape == (3, 4)
    samples = model.sample(3, 0.5, y=torch.tensor([0, 1, 3]), generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 2, 4, 4)
    with pytest.raises(ValueError, match="labels run from"):
        model.log_prob(x, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="pass labels"):
        model.log_prob(x)
    with pytest.raises(ValueError, match="class-conditional"):
        random_model().classify(x)


def test_classifier_and_its_term_in_the_training_loss() -> None:
    """classify(x) is a linear map of the top latent's mean over positions, and the training loss adds
    weight_y times its cross-entropy in bits per image (reference code), computed here by hand."""
    import math

    from glowtorch.likelihood import nll_bits_per_dim
    from glowtorch.train import TrainingObjective

    model = random_model(num_classes=4, levels=3, image_shape=(2, 8, 8))  # three latents: the top one is zs[-1]
    x, y = images(3, shape=(2, 8, 8)), torch.tensor([2, 0, 3])
    zs, _ = model.encode(x, torch.zeros(3, dtype=torch.long))  # the top latent does not depend on y
    pooled = zs[-1].mean(dim=(2, 3))  # (B, C_top)
    logits = pooled @ model.classifier.weight.T + model.classifier.bias
    assert_close(model.classify(x), logits, rtol=0, atol=1e-12)
    bpd = nll_bits_per_dim(model.log_prob(x, y), model.config.num_dims, model.config.n_bits)
    cross_entropy = -(logits.log_softmax(1)[torch.arange(3), y]).mean()
    for weight_y in (0.0, 0.01, 2.5):
        loss, per_image = TrainingObjective(model, weight_y)(x, y)
        assert_close(per_image, bpd, rtol=0, atol=1e-12)
        assert_close(loss, bpd.mean() + weight_y * cross_entropy / math.log(2.0), rtol=0, atol=1e-12)


def test_channel_class_prior_shifts_whole_channels_and_spatial_one_gives_every_position_its_own() -> None:
    y = torch.tensor([0, 1])
    channel = random_model(num_classes=3, image_shape=(1, 8, 8))  # a 2x2 top latent
    mean, log_std = channel.top_prior_params(2, y)
    shared_mean, shared_log_std = channel.top_prior_params(2, None)
    for shift in (mean - shared_mean, log_std - shared_log_std):  # the class adds one number per channel
        assert_close(shift, shift[:, :, :1, :1].expand_as(shift))
    spatial = random_model(num_classes=3, class_prior="spatial", image_shape=(1, 8, 8))
    mean, log_std = spatial.top_prior_params(2, y)
    assert mean.shape == log_std.shape == (2, spatial.top_channels, 2, 2)
    shift = mean - spatial.top_prior_params(2, None)[0]
    assert not torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift))
    assert not torch.allclose(mean[0], mean[1])
    assert spatial.label_prior.weight.shape[0] == 2 * spatial.top_channels * mean.shape[2] * mean.shape[3]
    with pytest.raises(ValueError, match="class_prior must be one of"):
        tiny_config(num_classes=3, class_prior="pixel")


@pytest.mark.parametrize("class_prior", ["channel", "spatial"])
def test_class_log_likelihoods_are_log_prob_under_each_class_up_to_one_constant(class_prior: str) -> None:
    model = random_model(num_classes=3, class_prior=class_prior, image_shape=(2, 4, 4))
    x = images(4)
    zs, _ = model.encode(x, torch.zeros(4, dtype=torch.long))
    scores = model.class_log_likelihoods(zs[-1])
    by_class = torch.stack([model.log_prob(x, torch.full((4,), c)) for c in range(3)], 1)
    assert scores.shape == (4, 3)
    assert_close(scores - scores[:, :1], by_class - by_class[:, :1], atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="class-conditional"):
        random_model().class_log_likelihoods(zs[-1])


def test_fit_class_prior_is_each_class_top_latent_mean_and_std_and_raises_the_likelihood() -> None:
    from glowtorch.preprocess import dequantize
    from glowtorch.train import fit_class_prior

    model = random_model(num_classes=3, class_prior="spatial", scale=0.1)
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(60) % 3
    pixels = torch.randint(0, 256, (60, 2, 4, 4), generator=generator, dtype=torch.uint8)
    pixels[labels == 1] //= 4  # classes that differ, so their priors do
    noise = torch.Generator().manual_seed(5)  # the draws fit_class_prior makes, batch by batch
    x = torch.cat([dequantize(pixels[i : i + 25], 8, generator=noise) for i in range(0, 60, 25)]).double()
    before = model.log_prob(x, labels).mean()
    top = model.encode(x, labels)[0][-1]
    assert fit_class_prior(model, pixels, labels, batch_size=25, seed=5) is model  # the same noise as x
    mean, log_std = model.top_prior_params(60, labels)
    for c in range(3):
        assert_close(mean[labels == c][0], top[labels == c].mean(0), atol=1e-9, rtol=0)
        assert_close(log_std[labels == c][0].exp(), top[labels == c].std(0, correction=0), atol=1e-9, rtol=0)
    assert model.log_prob(x, labels).mean() > before
    assert_close(model.decode(model.encode(x, labels)[0], labels), x, atol=1e-10, rtol=0)
    channel = random_model(num_classes=3, scale=0.1)
    fitted = fit_class_prior(channel, pixels, labels, batch_size=25, seed=5)
    assert channel.config.class_prior == "channel" and fitted.config.class_prior == "spatial"
    assert_close(fitted.encode(x, labels)[0][0], channel.encode(x, labels)[0][0], atol=0, rtol=0)  # the same flow
    assert fitted.log_prob(x, labels).mean() > channel.log_prob(x, labels).mean()
    with pytest.raises(ValueError, match="class-conditional"):
        fit_class_prior(random_model(), pixels, labels)
    with pytest.raises(ValueError, match="class\\(es\\) 2 have fewer"):
        fit_class_prior(model, pixels[:5], labels[:5])  # labels 0, 1, 2, 0, 1
    with pytest.raises(ValueError, match="labels run from 0 to 3, but the model has classes 0 to 2"):
        fit_class_prior(model, pixels, torch.where(labels == 2, 3, labels))
    with pytest.raises(ValueError, match="60 images but 59 labels"):
        fit_class_prior(model, pixels, labels[:59])


def test_config_roundtrip_dict() -> None:
    config = tiny_config(num_classes=2)
    assert GlowConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        GlowConfig.from_dict({**config.to_dict(), "widht": 3})


def test_actnorm_is_initialized_once_and_later_passes_leave_it_alone() -> None:
    """Only ``initialize`` sets ActNorm from data: a forward, log_prob or training step afterwards on other
    data does not (the bug where every pass, or every load, re-initialized it)."""
    torch.manual_seed(0)
    model = Glow(tiny_config())
    model.initialize(images(8, seed=1, dtype=torch.float32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shifted = 0.3 * images(8, seed=2, dtype=torch.float32) + 0.1  # other statistics
    model.log_prob(shifted)
    model(shifted)
    model.encode(shifted)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed"
