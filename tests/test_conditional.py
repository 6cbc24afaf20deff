"""Models conditioned on a context tensor: exactness for a fixed context (float64 Jacobians, round trips),
the context reaching couplings, split priors and the top prior, memory modes, the lowres context, errors."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from conftest import images, random_model
from glowtorch import Glow, GlowConfig
from glowtorch.context import context_from_lowres, context_shape, lowres_images
from glowtorch.layers import gaussian_log_prob
from test_model import flat, labels_for

VARIANTS = [
    dict(condition="lowres:2"),
    dict(condition="tensor:3,1,1"),  # a vector
    dict(condition="tensor:2,5,3", coupling="additive", permutation="invconv"),
    dict(condition="lowres:2", num_classes=3),
    dict(condition="lowres:4", image_shape=(1, 8, 8), levels=3, depth=1),
]


def conditional_model(seed: int = 0, **overrides) -> Glow:
    return random_model(seed=seed, context_features=4, **overrides)


def contexts(model: Glow, batch: int, seed: int = 1) -> torch.Tensor:
    return images(batch, model.config.context_shape, seed=seed)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_exactly_invertible_and_logdet_matches_jacobian_for_a_fixed_context(variant: dict) -> None:
    model = conditional_model(**variant)
    x = images(2, model.config.image_shape)
    c, y = contexts(model, 2), labels_for(model, 2)
    zs, logdet = model.encode(x, y, context=c)
    assert_close(model.decode(zs, y, context=c), x, atol=1e-10, rtol=0)
    dim = model.config.num_dims
    for i in range(2):
        y_i = None if y is None else y[i : i + 1]
        jac = torch.autograd.functional.jacobian(
            lambda v, i=i, y_i=y_i: flat(model.encode(v, y_i, context=c[i : i + 1])[0]), x[i : i + 1]
        )
        assert_close(logdet[i], torch.linalg.slogdet(jac.reshape(dim, dim))[1], atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("variant", VARIANTS[:4], ids=str)
def test_log_prob_is_prior_terms_plus_logdet_with_context_features(variant: dict) -> None:
    """Independent route: the priors rebuilt level by level from decoded latents and the encoder's features."""
    model = conditional_model(**variant)
    x, c, y = images(3, model.config.image_shape), contexts(model, 3), labels_for(model, 3)
    zs, logdet = model.encode(x, y, context=c)
    features = model.context_encoder(c)
    assert [f.shape[1] for f in features] == [model.config.context_shape[0] + 4] * model.config.levels
    expected = logdet + gaussian_log_prob(zs[-1], *model.top_prior_params(3, y, features[-1]))
    h = zs[-1]
    for level in reversed(range(model.config.levels - 1)):
        h, _ = model.levels[level + 1].inverse(h, features[level + 1])
        h, _ = model.squeeze.inverse(h)
        expected = expected + gaussian_log_prob(zs[level], *model.splits[level].prior(h, features[level]))
        h = torch.cat([h, zs[level]], 1)
    assert_close(model.log_prob(x, y, context=c), expected, atol=1e-10, rtol=1e-12)


def test_the_context_reaches_couplings_split_priors_and_top_prior() -> None:
    model = conditional_model(condition="lowres:2")
    x, c, other = images(2, model.config.image_shape), contexts(model, 2), contexts(model, 2, seed=7)
    features, features_other = model.context_encoder(c), model.context_encoder(other)
    # couplings: the only context-dependent logdet
    assert not torch.allclose(model.encode(x, context=c)[1], model.encode(x, context=other)[1])
    step = model.levels[0].layers[0]
    h = torch.randn(2, *model.latent_shapes[0][:1], 2, 2, dtype=torch.float64).repeat(1, 2, 1, 1)
    assert not torch.allclose(step(h, features[0])[0], step(h, features_other[0])[0])
    kept = torch.randn(2, model.splits[0].kept_channels, 2, 2, dtype=torch.float64)
    split, split_other = model.splits[0].prior(kept, features[0]), model.splits[0].prior(kept, features_other[0])
    top, top_other = model.top_prior_params(2, None, features[-1]), model.top_prior_params(2, None, features_other[-1])
    pairs = [*zip(split, split_other, strict=True), *zip(top, top_other, strict=True)]
    for a, b in pairs:  # means and log-stds of both priors
        assert not torch.allclose(a, b)


def test_a_fresh_model_starts_unaffected_by_its_context() -> None:
    """Zero-initialized output convolutions: before training, p(x | c) is the same for every context."""
    torch.manual_seed(0)
    model = Glow(GlowConfig(image_shape=(1, 8, 8), levels=2, depth=2, hidden_channels=8, condition="lowres:4",
                            context_features=4)).double()  # fmt: skip
    x = images(6, (1, 8, 8))
    c = contexts(model, 6)
    model.initialize(x, context=c)
    assert_close(model.log_prob(x, context=c), model.log_prob(x, context=contexts(model, 6, seed=3)))


@pytest.mark.parametrize("memory", ["checkpoint", "reversible"])
def test_memory_modes_give_the_same_gradients_to_flow_and_encoder(memory: str) -> None:
    model = conditional_model(condition="lowres:2", num_classes=3)
    x, c, y = images(3, model.config.image_shape), contexts(model, 3), labels_for(model, 3)

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.log_prob(x, y, context=c).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    standard = gradients()
    model.set_compute(memory=memory)
    other = gradients()
    assert set(standard) == set(other)
    encoder = [name for name in standard if name.startswith("context_encoder.")]
    assert encoder and all(standard[name].abs().sum() > 0 for name in encoder)
    for name in standard:
        assert_close(other[name], standard[name], atol=1e-10, rtol=1e-9)


def test_sampling_with_one_context_row_for_all_and_latents_decode_to_samples() -> None:
    model = conditional_model(condition="lowres:2", scale=0.05)  # larger random weights make samples overflow
    c = contexts(model, 1)
    generator = torch.Generator().manual_seed(0)
    zs, x = model.sample_with_latents(4, 0.8, generator=generator, context=c)
    assert x.shape == (4, *model.config.image_shape) and torch.isfinite(x).all()
    assert_close(model.decode(zs, context=c), x, atol=1e-10, rtol=0)
    assert_close(model.encode(x, context=c.expand(4, -1, -1, -1))[0][-1], zs[-1], atol=1e-9, rtol=0)
    modes = model.sample(2, 0.0, context=torch.cat([c, contexts(model, 1, seed=5)]))
    assert not torch.allclose(modes[0], modes[1])  # the mode depends on the context
    assert_close(model.sample(1, 0.0, context=c)[0], model.sample(3, 0.0, context=c)[2])


def test_lowres_images_average_and_round_in_the_models_bits() -> None:
    images_ = torch.tensor([[[[0, 1, 10, 10], [2, 2, 20, 21], [255, 255, 0, 0], [255, 254, 0, 1]]]], dtype=torch.uint8)
    assert lowres_images(images_, 2).tolist() == [[[[1, 15], [255, 0]]]]  # 1.25 -> 1, 15.25 -> 15, 254.75 -> 255
    # 5 bits: pixel // 8 -> [[0,0,1,1],[0,0,2,2],[31,31,0,0],[31,31,0,0]]; means 0, 1.5 -> 2 (half up), 31, 0
    assert lowres_images(images_, 2, n_bits=5).tolist() == [[[[0, 16], [248, 0]]]]
    context = context_from_lowres(lowres_images(images_, 2, n_bits=5), n_bits=5, dtype=torch.float64)
    assert_close(context, (torch.tensor([[[[0, 2], [31, 0]]]], dtype=torch.float64) + 0.5) / 32 - 0.5)
    config = GlowConfig(image_shape=(1, 4, 4), levels=2, depth=1, hidden_channels=4, condition="lowres:2", n_bits=5)
    assert_close(config.context_of(images_, torch.float64), context)


def test_condition_specs_are_checked() -> None:
    assert context_shape("lowres:4", (3, 32, 16)) == (3, 8, 4)
    assert context_shape("tensor:10,1,1", (3, 32, 32)) == (10, 1, 1)
    assert context_shape("", (3, 32, 32)) is None
    for bad in ("lowres", "lowres:1", "lowres:x", "lowres:3", "tensor:1,2", "tensor:0,1,1", "pixels:4"):
        with pytest.raises(ValueError, match="condition"):
            GlowConfig(image_shape=(1, 8, 8), levels=2, condition=bad)
    with pytest.raises(ValueError, match="context_features"):
        GlowConfig(image_shape=(1, 8, 8), levels=2, condition="lowres:2", context_features=0)
    with pytest.raises(ValueError, match="only 'lowres:F'"):
        config = GlowConfig(image_shape=(1, 8, 8), levels=2, condition="tensor:1,1,1")
        config.context_of(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))


def test_bad_contexts_are_refused_in_one_line() -> None:
    model = conditional_model(condition="lowres:2")
    x = images(2, model.config.image_shape)
    c = contexts(model, 2)
    with_nan = c.clone()
    with_nan[1, 0, 0, 0] = float("nan")
    cases = [
        (None, "conditioned on 'lowres:2': pass a context of shape"),
        (c[:, :1], r"must have shape \(2, 2, 2, 2\)"),
        (torch.cat([c, c, c]), r"must have shape \(2, 2, 2, 2\)"),
        ((c * 255).to(torch.uint8), "float tensor in model space"),
        (with_nan, "NaN"),
    ]
    for context, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            model.log_prob(x, context=context)
        assert "\n" not in str(error.value)
        with pytest.raises(ValueError, match=message):
            model.sample(2, context=context)
    plain = random_model()
    with pytest.raises(ValueError, match="has no context"):
        plain.log_prob(images(2), context=c)
    with pytest.raises(ValueError, match="has no context"):
        plain.decode(plain.encode(images(2))[0], context=c)


def test_superres_report_measures_samples_against_context_truth_and_bicubic() -> None:
    from glowtorch.preprocess import to_uint8
    from glowtorch.superres import bicubic_upsample, superres_report

    flat = torch.full((2, 1, 2, 2), 77, dtype=torch.uint8)
    assert (bicubic_upsample(flat, (8, 8)) == 77).all()
    model = random_model(image_shape=(1, 8, 8), condition="lowres:2", context_features=4, scale=0.05).float()
    images = (torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    report = superres_report(model, images, temperatures=(0.6, 0.3), diversity_samples=3)
    lowres = lowres_images(images, 2)
    generator = torch.Generator().manual_seed(0)
    samples = to_uint8(model.sample(5, 0.6, generator=generator, context=context_from_lowres(lowres)).clamp(-0.5, 0.5))
    expected = (lowres_images(samples, 2).double() - lowres.double()).abs().mean().item()
    assert report["fidelity_mae"]["0.6"] == pytest.approx(expected, abs=1e-12)
    bicubic = bicubic_upsample(lowres, (8, 8)).double()
    psnr = 10 * torch.log10(255**2 / (bicubic - images.double()).pow(2).flatten(1).mean(1))
    assert report["psnr_bicubic"] == pytest.approx(psnr.mean().item())
    assert report["bicubic_fidelity_mae"] == pytest.approx(
        (lowres_images(bicubic.to(torch.uint8), 2).double() - lowres.double()).abs().mean().item()
    )
    assert 0 < report["diversity"]["0.3"] < report["diversity"]["0.6"]  # the lower temperature, the closer
    with pytest.raises(ValueError, match="lowres:F"):
        superres_report(random_model(), images)


def test_bfloat16_coupling_networks_take_the_context_too() -> None:
    model = conditional_model(condition="lowres:2", scale=0.1).float()
    x, c = images(4, model.config.image_shape, dtype=torch.float32), contexts(model, 4).float()
    exact = model.log_prob(x, context=c)
    model.set_compute(precision="bfloat16")
    rounded = model.log_prob(x, context=c)
    other = model.log_prob(x, context=contexts(model, 4, seed=9).float())
    assert (rounded - exact).abs().max() < 0.01 * exact.abs().max()
    assert (other - exact).abs().max() > 10 * (rounded - exact).abs().max()  # the context still counts
    with model.full_precision():
        assert torch.equal(model.log_prob(x, context=c), exact)


def test_class_and_context_together() -> None:
    from glowtorch.class_prior import fit_class_prior

    model = conditional_model(condition="lowres:2", num_classes=3)
    x, c = images(3, model.config.image_shape), contexts(model, 3)
    zs, _ = model.encode(x, torch.tensor([0, 1, 2]), context=c)
    by_class = model.class_log_likelihoods(zs[-1], context=c)
    for k in range(3):  # log p(z_top | y = k, context) from the top prior with both shifts
        mean, log_std = model.top_prior_params(3, torch.full((3,), k), model.context_encoder(c)[-1])
        assert_close(by_class[:, k], gaussian_log_prob(zs[-1], mean, log_std))
    assert model.classify(x, context=c).shape == (3, 3)
    with pytest.raises(ValueError, match="without a context"):
        fit_class_prior(model, torch.zeros(6, 2, 4, 4, dtype=torch.uint8), torch.tensor([0, 0, 1, 1, 2, 2]))


def test_training_batches_carry_the_contexts_of_their_own_augmented_images() -> None:
    """The context of each training image is made after its flip and shift, from the very pixels of x."""
    from glowtorch.data import load_dataset
    from glowtorch.distributed import Distributed
    from glowtorch.preprocess import to_uint8
    from glowtorch.train import BatchSource, TrainConfig

    config = GlowConfig(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=4, condition="lowres:2")
    train = TrainConfig(batch_size=16, steps=1, flip=True, shift=2, precision="float32")
    source = BatchSource(load_dataset("digits"), train, 8, False, Distributed(), torch.device("cpu"), config.context_of)
    batch = source(3)
    assert batch.context.shape == (16, 1, 4, 4)
    assert torch.equal(batch.context, config.context_of(to_uint8(batch.x)))
    unshifted = config.context_of(load_dataset("digits").images[batch.indices])
    assert not torch.equal(batch.context, unshifted)  # the augmentation moved them
