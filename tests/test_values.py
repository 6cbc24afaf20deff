"""Hand-computed values for the context, super-resolution, OOD and conversion code: each test pins what a
function computes on an input small enough to work out on paper (ties at .5, models below 8 bits,
non-constant images, a background model other than the main one, overlapping score sets), so that a
one-line change in the computation fails here even where shapes, orders and signs stay right."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from conftest import randomize, tiny_config
from glowtorch import Glow
from glowtorch.context import ContextEncoder, context_from_lowres, context_shape, enlarge, lowres_images, resize


def u8(rows) -> torch.Tensor:
    """One uint8 image ``(1, 1, H, W)`` from nested rows."""
    return torch.tensor(rows, dtype=torch.uint8)[None, None]


# --------------------------------------------------------------------------- the low-resolution context
@pytest.mark.parametrize(
    "block, expected",
    [
        ([[0, 1], [0, 1]], 1),  # mean 0.5: half up gives 1 (half to even would give 0)
        ([[2, 3], [2, 3]], 3),  # 2.5 -> 3 (half to even: 2)
        ([[0, 0], [0, 1]], 0),  # 0.25 -> 0
        ([[1, 1], [1, 2]], 1),  # 1.25 -> 1
        ([[1, 2], [2, 2]], 2),  # 1.75 -> 2
    ],
)
def test_the_context_rounds_each_blocks_mean_half_up(block, expected: int) -> None:
    assert lowres_images(u8(block), 2).item() == expected


def test_the_context_is_computed_in_the_models_bits() -> None:
    # 3 bits: a pixel's level is pixel // 32. Levels [[0, 1], [1, 1]] -> mean 0.75 -> 1 -> 32.
    # From the 8-bit pixels instead: mean(0, 32, 63, 63) = 39.5 -> 40, not a 3-bit level at all.
    image = u8([[0, 32], [63, 63]])
    assert lowres_images(image, 2, n_bits=3).item() == 32
    # levels [[0, 0], [1, 1]]: mean 0.5 -> half up -> 1 -> 32; the 8-bit mean (0+31+32+63)/4 = 31.5 would give 32
    # by chance, so a second case tells them apart: levels (7, 7, 6, 6) -> 6.5 -> 7 -> 224
    assert lowres_images(u8([[255, 224], [223, 192]]), 2, n_bits=3).item() == 224
    # each pixel is reduced before averaging: 31 is level 0 at 3 bits (31 / 32 rounded would be level 1)
    assert lowres_images(u8([[31, 31], [31, 31]]), 2, n_bits=3).item() == 0
    assert lowres_images(u8([[63, 63], [63, 31]]), 2, n_bits=3).item() == 32  # levels 1, 1, 1, 0 -> 0.75 -> 1
    # 1 bit: pixels >= 128 are level 1; three of four -> 0.75 -> 1 -> 128
    assert lowres_images(u8([[128, 255], [130, 0]]), 2, n_bits=1).item() == 128
    assert lowres_images(u8([[255, 255], [255, 255]]), 2, n_bits=8).item() == 255


def test_the_context_averages_each_block_of_its_factor_separately() -> None:
    image = u8([[0, 0, 0, 40, 80, 120], [0, 0, 0, 40, 80, 120], [0, 0, 0, 40, 80, 120],
                [9, 9, 9, 0, 0, 0], [9, 9, 9, 0, 0, 0], [9, 9, 9, 0, 0, 3]])  # fmt: skip
    assert lowres_images(image, 3).tolist() == [[[[0, 80], [9, 0]]]]  # 0.333 -> 0 in the last block
    channels = torch.cat([image, 255 - image], 1)  # channels are pooled on their own
    assert lowres_images(channels, 3)[0, 1].tolist() == [[255, 175], [246, 255]]


def test_the_context_in_model_space_is_each_bins_centre() -> None:
    lowres = u8([[0, 32, 224]])
    expected = (torch.tensor([0.0, 1.0, 7.0]) + 0.5) / 8 - 0.5  # 3 bits: levels 0, 1, 7
    assert_close(context_from_lowres(lowres, n_bits=3)[0, 0, 0], expected)
    assert_close(
        context_from_lowres(u8([[0, 255]]), n_bits=8)[0, 0, 0], torch.tensor([0.5 / 256 - 0.5, 0.5 - 0.5 / 256])
    )


def test_images_that_are_not_uint8_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="expected uint8 images"):
        lowres_images(torch.zeros(1, 1, 4, 4), 2)
    with pytest.raises(ValueError, match="expected uint8 images"):
        lowres_images(torch.zeros(1, 4, 4, dtype=torch.uint8), 2)


@pytest.mark.parametrize(
    "condition, shape, message",
    [
        ("lowres:", (1, 8, 8), "condition must be 'lowres:F'"),
        ("foo:2", (1, 8, 8), "condition must be 'lowres:F'"),
        ("tensor:", (1, 8, 8), "condition must be 'lowres:F'"),
        ("lowres:1", (1, 8, 8), "a whole factor F >= 2"),
        ("lowres:x", (1, 8, 8), "a whole factor F >= 2"),
        ("lowres:2,2", (1, 8, 8), "a whole factor F >= 2"),
        ("tensor:1,2", (1, 8, 8), "three positive sizes"),
        ("tensor:0,1,1", (1, 8, 8), "three positive sizes"),
        ("lowres:3", (1, 9, 8), "9x8 is not divisible by 3"),  # the width alone
        ("lowres:3", (1, 8, 9), "8x9 is not divisible by 3"),  # the height alone
    ],
)
def test_malformed_conditions_are_refused(condition: str, shape: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        context_shape(condition, shape)


def test_condition_shapes() -> None:
    assert context_shape("lowres:2", (3, 8, 6)) == (3, 4, 3)
    assert context_shape("tensor:1,1,1", (3, 8, 6)) == (1, 1, 1)
    assert context_shape("", (3, 8, 6)) is None


# --------------------------------------------------------------------------- resizing and the encoder
def test_enlarge_repeats_each_pixel_as_a_block() -> None:
    assert enlarge(u8([[10, 20]]), (2, 4)).tolist() == [[[[10, 10, 20, 20], [10, 10, 20, 20]]]]


def test_resize_is_bilinear_up_and_area_averaged_down() -> None:
    row = torch.tensor([[[[0.0, 1.0]]]])
    assert_close(resize(row, (1, 4)), torch.tensor([[[[0.0, 0.25, 0.75, 1.0]]]]))  # not nearest: 0 0 1 1
    square = torch.tensor([[[[1.0, 2.0], [3.0, 7.0]]]])
    assert_close(resize(square, (1, 1)), torch.tensor([[[[3.25]]]]))  # the mean, not the max
    assert_close(resize(square, (2, 2)), square)  # the same size: unchanged
    # one axis up, one down: bilinear with an antialiasing triangle filter. Downsampling 4 -> 2, output 0
    # weighs input pixels 0, 1, 2 by 0.75, 0.75, 0.25 (normalized by 1.75): 0 0 0 7 -> 0 and 7 * 0.75 / 1.75
    mixed = torch.tensor([[[[0.0, 0.0, 0.0, 7.0]]]])
    assert_close(resize(mixed, (2, 2)), torch.tensor([[[[0.0, 3.0], [0.0, 3.0]]]]))
    # 4 -> 1 down, 1 -> 3 up: the triangle filter spans all 4 pixels (0.625, 0.875, 0.875, 0.625, over 3):
    # 0 0 8 0 -> 7/3, where plain bilinear would take the middle two pixels' mean, 4
    column = torch.tensor([[[[0.0], [0.0], [8.0], [0.0]]]])
    assert_close(resize(column, (1, 3)), torch.full((1, 1, 1, 3), 7 / 3))
    # down on one axis, the same size on the other: area averages (the triangle filter would give 1.43, 2.43, ...)
    tall = torch.tensor([[[[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 9.0]]]])
    assert_close(resize(tall, (2, 2)), torch.tensor([[[[1.0, 2.0], [5.0, 7.0]]]]))
    wide = torch.tensor([[[[0.0, 2.0, 4.0, 8.0], [2.0, 2.0, 2.0, 6.0]]]])
    assert_close(resize(wide, (2, 2)), torch.tensor([[[[1.0, 6.0], [2.0, 4.0]]]]))
    # 4 -> 3 columns: area bins [0, 2), [1, 3), [2, 4) over the column means 1, 2, 3, 7
    assert_close(resize(wide, (1, 3)), torch.tensor([[[[1.5, 2.5, 5.0]]]]))


def test_the_context_encoder_computes_the_resized_context_beside_its_learned_channels() -> None:
    torch.manual_seed(0)
    encoder = ContextEncoder(2, 3, [(8, 8), (2, 2)]).double()
    context = torch.rand(2, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    features = encoder(context)
    assert [tuple(f.shape) for f in features] == [(2, 5, 8, 8), (2, 5, 2, 2)] and encoder.out_channels == 5
    # computed here with torch.nn.functional alone, from the encoder's weights
    conv = [m for m in encoder.trunk if isinstance(m, torch.nn.Conv2d)]
    trunk = F.relu(F.conv2d(F.relu(F.conv2d(context, conv[0].weight, conv[0].bias, padding=1)), conv[1].weight,
                            conv[1].bias, padding=1))  # fmt: skip
    up = F.interpolate(context, size=(8, 8), mode="bilinear", align_corners=False)
    down = F.avg_pool2d(context, 2)
    head0, head1 = encoder.heads
    learned0 = F.relu(F.conv2d(F.interpolate(trunk, size=(8, 8), mode="bilinear", align_corners=False),
                               head0.weight, head0.bias, padding=1))  # fmt: skip
    learned1 = F.relu(F.conv2d(F.avg_pool2d(trunk, 2), head1.weight, head1.bias, padding=1))
    assert_close(features[0], torch.cat([up, learned0], 1))
    assert_close(features[1], torch.cat([down, learned1], 1))
    assert features[0][:, :2].abs().sum() > 0 and features[0][:, 2:].abs().sum() > 0


# --------------------------------------------------------------------------- super-resolution report
def sr_model() -> Glow:
    torch.manual_seed(0)
    config = tiny_config(image_shape=(1, 4, 4), condition="lowres:2", context_features=2, depth=1)
    return randomize(Glow(config), scale=0.05).eval()


def scripted_samples(monkeypatch, by_temperature: dict[float, list[torch.Tensor]]) -> None:
    """``sample_images`` replaced by samples given here: at each temperature, the next of its list."""
    import glowtorch.superres as superres

    served = {t: iter(v) for t, v in by_temperature.items()}
    monkeypatch.setattr(superres, "sample_images", lambda model, lowres, t, generator, batch_size=500: next(served[t]))


def test_the_superres_report_by_hand(monkeypatch) -> None:
    from glowtorch.superres import superres_report

    truth = u8([[0, 0, 100, 100], [0, 0, 100, 100], [40, 40, 200, 200], [40, 40, 200, 200]])
    mode = truth.clone()
    mode[0, 0, 0, 0] = 16  # one pixel off by 16: MSE 16 * 16 / 16 = 16 -> PSNR 10 log10(255^2 / 16)
    hot = truth.clone()
    hot[0, 0, 0] += 8  # the top row 8 higher: its low-resolution pixels 4 higher -> fidelity (4 + 4) / 4 = 2
    # diversity at 0.5 from 3 samples: pixel (0, 0) takes 0, 6, 0 and pixel (3, 3) 200, 202, 200, the others
    # agree: the mean over the 16 pixels of each one's standard deviation with Bessel's correction
    first, second, third = truth.clone(), truth.clone(), truth.clone()
    second[0, 0, 0, 0], second[0, 0, 3, 3] = 6, 202
    scripted_samples(monkeypatch, {0.0: [mode], 0.5: [truth, first, second, third], 1.0: [hot] * 4})
    report = superres_report(sr_model(), truth, temperatures=(0.0, 0.5, 1.0), diversity_samples=3)
    assert report["fidelity_mae"] == {"0": pytest.approx(1.0), "0.5": 0.0, "1": pytest.approx(2.0)}  # mode: 16/4
    assert report["psnr_mode"] == pytest.approx(10 * torch.log10(torch.tensor(255.0**2 / 16)).item())
    spread = statistics.stdev([0, 6, 0]) + statistics.stdev([200, 202, 200])
    assert report["diversity"]["0.5"] == pytest.approx(spread / 16)
    assert report["diversity"]["1"] == 0.0
    # bicubic upsampling of a context of flat 2x2 blocks: exact in the middle, PSNR finite and the same as here
    bicubic = F.interpolate(lowres_images(truth, 2).double(), size=(4, 4), mode="bicubic", align_corners=False)
    mse = (bicubic.round().clamp(0, 255) - truth.double()).pow(2).mean()
    assert report["psnr_bicubic"] == pytest.approx(10 * torch.log10(255.0**2 / mse).item())


def test_the_mode_is_sampled_when_temperature_0_is_not_asked_for(monkeypatch) -> None:
    from glowtorch.superres import superres_report

    truth = u8([[0, 0, 100, 100], [0, 0, 100, 100], [40, 40, 200, 200], [40, 40, 200, 200]])
    off = truth.clone()
    off[0, 0, 1, 1] = 4  # MSE 1
    scripted_samples(monkeypatch, {1.0: [truth, truth, truth], 0.0: [off]})
    report = superres_report(sr_model(), truth, temperatures=(1.0,), diversity_samples=2)
    assert report["psnr_mode"] == pytest.approx(10 * torch.log10(torch.tensor(255.0**2 / 1)).item())
    assert report["fidelity_mae"] == {"1": 0.0} and report["diversity"] == {"1": 0.0}


def test_an_exact_reproduction_counts_as_100_db() -> None:
    from glowtorch.superres import _finite_mean, _psnr

    image = u8([[1, 2], [3, 4]])
    assert _finite_mean(_psnr(image, image)) == 100.0
    other = image.clone()
    other[0, 0, 0, 0] = 3  # MSE 4 / 4 = 1
    both = _psnr(torch.cat([image, image]), torch.cat([image, other]))
    assert _finite_mean(both) == pytest.approx((100 + 10 * torch.log10(torch.tensor(255.0**2)).item()) / 2)


def test_the_figure_columns_are_context_bicubic_samples_and_truth(monkeypatch) -> None:
    from glowtorch.superres import bicubic_upsample, superres_figure

    truth = u8([[0, 0, 100, 100], [0, 0, 100, 100], [40, 40, 200, 200], [40, 40, 200, 200]])
    truth = torch.cat([truth, 255 - truth])
    truth[1, 0, 0, 0] = 0
    samples = [torch.full_like(truth, v) for v in (1, 2, 3, 4)]
    scripted_samples(monkeypatch, {0.6: samples[:2], 1.0: samples[2:]})
    cells, columns = superres_figure(sr_model(), truth, temperatures=(0.6, 1.0), per_temperature=2)
    assert columns == 7 and cells.shape == (14, 1, 4, 4)
    lowres = lowres_images(truth, 2)
    grid = cells.view(2, 7, 1, 4, 4)
    assert torch.equal(grid[:, 0], lowres.repeat_interleave(2, 2).repeat_interleave(2, 3))  # blocks
    assert torch.equal(grid[:, 1], bicubic_upsample(lowres, (4, 4)))
    assert not torch.equal(grid[:, 0], grid[:, 1])
    assert [grid[:, i].unique().item() for i in range(2, 6)] == [1, 2, 3, 4]
    assert torch.equal(grid[:, 6], truth)


def bicubic_by_hand(values: list[float], size: int) -> list[int]:
    """One row upsampled to ``size`` pixels as PyTorch's bicubic does it (A = -0.75, half-pixel centres,
    edge pixels repeated), rounded and clamped to 0..255."""
    a = -0.75

    def near(x: float) -> float:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    out = []
    for i in range(size):
        position = (i + 0.5) * len(values) / size - 0.5
        base = int(torch.floor(torch.tensor(position)).item())
        t = position - base
        weights = [far(t + 1), near(t), near(1 - t), far(2 - t)]
        pick = [values[min(max(base + k, 0), len(values) - 1)] for k in (-1, 0, 1, 2)]
        out.append(round(min(max(sum(w * v for w, v in zip(weights, pick, strict=True)), 0), 255)))
    return out


def test_bicubic_upsampling_by_hand() -> None:
    from glowtorch.superres import bicubic_upsample

    assert bicubic_upsample(u8([[0, 100]]), (1, 4))[0, 0, 0].tolist() == bicubic_by_hand([0, 100], 4)
    # a bright edge overshoots past 255 (1.1 x 255 at one pixel): clamped to 255, never wrapped round to 0
    up = bicubic_upsample(u8([[0, 255, 255, 255]]), (1, 8))[0, 0, 0].tolist()
    assert up == bicubic_by_hand([0, 255, 255, 255], 8) and up[3:] == [255] * 5


# --------------------------------------------------------------------------- OOD
@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    torch.manual_seed(0)
    main = randomize(Glow(tiny_config(image_shape=(1, 8, 8), depth=1)), scale=0.05, seed=0).eval()
    background = randomize(Glow(tiny_config(image_shape=(1, 8, 8), depth=1)), scale=0.3, seed=7).eval()
    return main, background


def test_the_likelihood_ratio_is_the_main_models_bits_minus_the_backgrounds(two_models) -> None:
    from glowtorch.evaluate import score_images
    from glowtorch.ood import load_ood_set, ood_report

    model, background = two_models
    inliers = load_ood_set("smooth", model, 16)
    outliers = load_ood_set("noise", model, 16)
    train = load_ood_set("constant", model, 16)[1]
    report = ood_report(model, inliers, [outliers], train, background=background, batch_size=4)
    mine = score_images(model, outliers[1]).bits_per_dim
    theirs = score_images(background, outliers[1]).bits_per_dim
    ratio = report.scores["noise"]["likelihood_ratio"]
    assert torch.allclose(ratio, mine - theirs) and not torch.allclose(ratio, theirs - mine)
    assert (mine - theirs).abs().min() > 1e-3  # two different models: the ratio is not zero
    assert report.typical_bpd == pytest.approx(score_images(model, train).bits_per_dim.mean().item())
    typical = report.typical_bpd
    # the batch test: consecutive groups of 4, their mean bits/dim against the typical value
    test_bpd = report.scores["smooth"]["bpd"]
    groups = torch.stack([test_bpd[i : i + 4].mean() for i in range(0, 16, 4)])
    out_groups = torch.stack([mine[i : i + 4].mean() for i in range(0, 16, 4)])
    from glowtorch.ood import auroc

    expected = auroc((groups - typical).abs(), (out_groups - typical).abs())
    assert report.metrics["noise"]["typicality_batch4"]["auroc"] == expected
    assert set(report.metrics["noise"]) == {"bpd", "typicality", "complexity", "likelihood_ratio", "typicality_batch4"}


def test_batch_means_take_consecutive_images_and_drop_the_rest() -> None:
    from glowtorch.ood import _batch_means

    values = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 99.0])
    assert _batch_means(values, 3).tolist() == [2.0, 20.0]  # strided groups would give (1+10+99)/3, ...
    assert _batch_means(values, 1).tolist() == values.tolist()
    assert _batch_means(values, 7).tolist() == [pytest.approx(165.0 / 7)]


def test_the_transforms_of_a_set_by_hand(two_models) -> None:
    from glowtorch.ood import load_ood_set

    model = two_models[0]
    noise = load_ood_set("noise", model, 3)[1]
    flipped = load_ood_set("noise:hflip", model, 3)[1]
    assert torch.equal(flipped[..., :, 0], noise[..., :, 7]) and torch.equal(flipped[..., 2, 3], noise[..., 2, 4])
    rotated = load_ood_set("noise:rot90", model, 3)[1]  # counter-clockwise: the last column becomes the top row
    assert torch.equal(rotated[..., 0, :], noise[..., :, 7]) and torch.equal(rotated[..., 7, 0], noise[..., 0, 0])
    assert torch.equal(load_ood_set("noise:invert", model, 3)[1], 255 - noise)


def test_the_synthetic_sets_by_hand(two_models) -> None:
    from glowtorch.ood import load_ood_set

    model = two_models[0]
    smooth = load_ood_set("smooth", model, 50)[1]
    assert smooth.dtype == torch.uint8 and smooth.shape == (50, 1, 8, 8) and smooth.max() <= 63
    neighbours = (smooth[..., 1:].int() - smooth[..., :-1].int()).abs().float().mean()
    noise = load_ood_set("noise", model, 50)[1]
    assert neighbours < 8 < (noise[..., 1:].int() - noise[..., :-1].int()).abs().float().mean()
    assert noise.max() > 240 and noise.min() < 15  # uniform over 0..255
    assert len(load_ood_set("noise", model, 3000)[1]) == 2000 and len(load_ood_set("black", model)[1]) == 2000


def test_each_synthetic_set_is_its_recipe_drawn_from_the_seed(two_models) -> None:
    from glowtorch.ood import load_ood_set
    from glowtorch.preprocess import to_uint8

    model = two_models[0]

    def drawn(seed: int = 4) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    noise = torch.randint(0, 256, (5, 1, 8, 8), generator=drawn())  # uniform over 0..255
    assert torch.equal(load_ood_set("noise", model, 5, seed=4)[1], noise.to(torch.uint8))
    levels = torch.randint(0, 256, (5, 1, 1, 1), generator=drawn())  # one grey level per image
    assert torch.equal(load_ood_set("constant", model, 5, seed=4)[1], levels.expand(5, 1, 8, 8).to(torch.uint8))
    coarse = torch.rand(5, 1, 4, 4, generator=drawn()) * 63  # 4x4 noise in 0..63, bilinear to 8x8, rounded
    smooth = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False).round().to(torch.uint8)
    assert torch.equal(load_ood_set("smooth", model, 5, seed=4)[1], smooth)
    with torch.no_grad():
        samples = to_uint8(model.sample(5, 1.0, generator=drawn()))  # the model's own, at temperature 1
    assert torch.equal(load_ood_set("samples", model, 5, seed=4)[1], samples)
    assert torch.equal(load_ood_set("black", model, 5)[1], torch.zeros(5, 1, 8, 8, dtype=torch.uint8))
    for name in ("noise", "constant", "smooth", "black", "samples"):
        assert len(load_ood_set(name, model, 2001)[1]) == 2000  # made sets stop at 2,000 images
        assert len(load_ood_set(name, model)[1]) == 2000


def test_a_dataset_set_takes_its_first_10000_test_images_unless_limited(two_models, monkeypatch) -> None:
    import glowtorch.ood as ood
    from glowtorch.data import Dataset

    many = torch.arange(10005, dtype=torch.int64).remainder(256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 8, 8)
    asked = []

    def load(name, data_dir, train, channels):
        asked.append((name, data_dir, train, channels))
        return Dataset(many.contiguous(), None)

    monkeypatch.setattr(ood, "load_dataset", load)
    images = ood.load_ood_set("mine=some/folder", two_models[0])[1]
    assert len(images) == 10000 and torch.equal(images, many[:10000])
    assert asked == [("mine", "some/folder", False, 1)]  # the test split
    assert len(ood.load_ood_set("mine", two_models[0], 7)[1]) == 7


def test_typical_images_are_a_seeded_draw_from_the_training_split(two_models, monkeypatch) -> None:
    import glowtorch.ood as ood
    from glowtorch.data import Dataset

    train = torch.arange(50, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    asked = []
    monkeypatch.setattr(ood, "load_dataset", lambda *a, **k: asked.append((a, k)) or Dataset(train, None))
    chosen = ood.typical_images("mine=my/folder", two_models[0], count=6, seed=3)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(3))[:6]
    assert chosen.shape == (6, 1, 8, 8) and chosen[:, 0, 0, 0].tolist() == order.tolist()  # 4x4 -> 8x8, flat
    assert asked == [(("mine", "my/folder"), {"train": True, "channels": 1})]
    ood.typical_images("mine", two_models[0], count=6)
    assert asked[-1][0] == ("mine", None)


def test_the_batch_test_needs_two_whole_batches_per_set(two_models) -> None:
    from glowtorch.ood import load_ood_set, ood_report

    model = two_models[0]
    name, images = load_ood_set("noise", model, 9)
    train = images[:2]
    report = ood_report(model, (name, images[:8]), [("black", images[:8] * 0)], train, batch_size=4)  # exactly 2
    assert "typicality_batch4" in report.metrics["black"]
    with pytest.raises(ValueError, match="noise has 7 images: the batch typicality test needs at least 8"):
        ood_report(model, (name, images[:7]), [("black", images[:8] * 0)], train, batch_size=4)
    assert (
        "typicality_batch1"
        in ood_report(model, (name, images[:2]), [("b", images[:2] * 0)], train, batch_size=1).metrics["b"]
    )
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        ood_report(model, (name, images), [("b", images)], train, batch_size=0)


def test_the_report_files_by_hand(tmp_path) -> None:
    import csv

    from glowtorch.ood import OODReport

    scores = {
        "test": {"bpd": torch.tensor([1.0, 2.0]), "likelihood_ratio": torch.tensor([0.5, -0.25])},
        "noise": {"bpd": torch.tensor([8.125])},  # no likelihood ratio for this set: an empty cell
    }
    metrics = {"noise": {"bpd": {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}}}
    folder = OODReport("test", 1.5, 2, scores, metrics).write(tmp_path / "new" / "report")  # parents made
    with open(folder / "scores.csv") as f:
        rows = list(csv.reader(f))
    assert rows == [["set", "index", "bpd", "likelihood_ratio"], ["test", "0", "1.000000", "0.500000"],
                    ["test", "1", "2.000000", "-0.250000"], ["noise", "0", "8.125000", ""]]  # fmt: skip
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary == {"in_set": "test", "typical_bpd": 1.5, "batch_size": 2, "metrics": metrics}
    assert (folder / "metrics.md").read_text().splitlines()[2] == "| noise | bpd | 1.000 | 1.000 | 0.000 |"
    assert {p.name for p in folder.glob("hist_*.png")} == {"hist_bpd.png", "hist_likelihood_ratio.png"}


def test_metrics_on_overlapping_scores_by_hand() -> None:
    from glowtorch.ood import aupr, auroc, fpr_at_tpr

    inliers, outliers = torch.tensor([1.0, 2, 3, 4]), torch.tensor([3.0, 4, 5, 6])
    # pairs (out, in) in order: 3 beats 1, 2 and ties 3 (2.5); 4: 3.5; 5 and 6: 4 each -> 14 / 16
    assert auroc(inliers, outliers) == 14 / 16
    # thresholds 6, 5, 4, 3: recall 1/4, 2/4, 3/4, 1 at precision 1, 1, 3/4, 4/6
    assert aupr(inliers, outliers) == pytest.approx(0.25 * (1 + 1 + 0.75 + 4 / 6))
    assert fpr_at_tpr(inliers, outliers) == 0.5  # flagging all four outliers needs threshold 3: inliers 3, 4
    assert fpr_at_tpr(inliers, outliers, tpr=0.5) == 0.0  # two outliers: threshold 5
    assert fpr_at_tpr(inliers, outliers, tpr=0.75) == 0.25  # three: threshold 4, inlier 4 flagged


def test_complexity_is_the_size_of_the_smallest_png_pil_writes() -> None:
    import io

    from PIL import Image

    from glowtorch.ood import png_bits_per_dim

    generator = torch.Generator().manual_seed(3)
    # a noisy ramp, whose PNG is 2,611 bytes with optimize=True and 2,685 without
    ramp = (torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 20).to(torch.uint8)
    ramp += torch.arange(64).view(1, 1, 1, 64).to(torch.uint8)
    noisy = torch.randint(0, 256, (1, 3, 8, 8), generator=generator, dtype=torch.uint8)
    sizes = []
    for image in (ramp, noisy):
        array = image[0].permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buffer, "PNG", compress_level=9,
                                                                              optimize=True)  # fmt: skip
        sizes.append(8.0 * len(buffer.getvalue()) / image.numel())
    assert png_bits_per_dim(ramp).tolist() + png_bits_per_dim(noisy).tolist() == sizes


def test_nan_and_infinite_scores_sort_as_the_most_out_of_distribution() -> None:
    from glowtorch.ood import auroc

    nan, inf = float("nan"), float("inf")
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([nan, inf])) == 1.0
    # pairs (out, in): (inf, nan) tie 0.5, (inf, 1) 1, (0, nan) 0, (0, 1) 0 -> 1.5 / 4
    assert auroc(torch.tensor([nan, 1.0]), torch.tensor([inf, 0.0])) == 1.5 / 4
    assert auroc(torch.tensor([-inf, 0.0]), torch.tensor([-1.0, 1.0])) == 0.75
    with pytest.raises(ValueError, match="at least one inlier and one outlier"):
        auroc(torch.tensor([]), torch.tensor([1.0]))


# --------------------------------------------------------------------------- conversion
FIXTURES = Path(__file__).parent / "fixtures" / "convert"


def test_a_y0ast_models_bits_come_from_its_hparams() -> None:
    from glowtorch.convert import load_port_checkpoint, y0ast_config

    name = "y0ast_affine_reverse_gray"
    state = load_port_checkpoint(FIXTURES / f"{name}.pt")
    hparams = json.loads((FIXTURES / f"{name}_hparams.json").read_text())
    assert y0ast_config(state, {**hparams, "n_bits": 5}).n_bits == 5
    assert y0ast_config(state, {k: v for k, v in hparams.items() if k != "n_bits"}).n_bits == 8


class _Payload:
    """A pickle that would create ``marker`` when loaded with code execution allowed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_port_checkpoint_is_read_as_tensors_only(tmp_path) -> None:
    from glowtorch.convert import ConversionError, load_port_checkpoint

    marker = tmp_path / "ran"
    torch.save({"model": {"w": torch.ones(1)}, "extra": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ConversionError, match="not a PyTorch checkpoint of tensors"):
        load_port_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save({"a": torch.ones(1), "b": 3}, tmp_path / "mixed.pt")
    with pytest.raises(ConversionError, match="holds no state_dict"):
        load_port_checkpoint(tmp_path / "mixed.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(ConversionError, match="holds no state_dict"):
        load_port_checkpoint(tmp_path / "list.pt")
    torch.save({"state_dict": {"module.w": torch.ones(2)}}, tmp_path / "wrapped.pt")
    assert list(load_port_checkpoint(tmp_path / "wrapped.pt")) == ["w"]
    with pytest.raises(ConversionError, match="not found"):
        load_port_checkpoint(tmp_path / "missing.pt")


def test_a_rosinality_model_keeps_learning_its_top_prior() -> None:
    from glowtorch.convert import load_port_checkpoint, rosinality_config

    state = load_port_checkpoint(FIXTURES / "rosinality_affine_lu_gray.pt")
    config = rosinality_config(state, 8, 5)
    assert config.learn_top and config.coupling_network == "bias" and config.zero_conv_padding == 1.0
    assert (config.image_shape, config.n_bits, config.permutation) == ((1, 8, 8), 5, "lu")


@pytest.mark.parametrize("bad", [0.0, -0.5])
def test_a_rosinality_actnorm_scale_at_or_below_zero_is_refused(bad: float) -> None:
    from glowtorch.convert import ConversionError, from_rosinality, load_port_checkpoint

    state = load_port_checkpoint(FIXTURES / "rosinality_affine_lu_gray.pt")
    key = "blocks.0.flows.1.actnorm.scale"
    state[key] = state[key].clone()
    state[key].view(-1)[1] = bad  # one channel of one step
    with pytest.raises(ConversionError, match=f"{re.escape(key)} has values <= 0"):
        from_rosinality(state, 8, 5)


def test_what_is_not_a_y0ast_glow_is_refused_by_name() -> None:
    from glowtorch.convert import ConversionError, load_port_checkpoint, y0ast_config

    state = load_port_checkpoint(FIXTURES / "y0ast_affine_reverse_gray.pt")
    hparams = json.loads((FIXTURES / "y0ast_affine_reverse_gray_hparams.json").read_text())
    without_prior = {k: v for k, v in state.items() if k != "prior_h"}
    with pytest.raises(ConversionError, match="not a y0ast/Glow-PyTorch checkpoint"):
        y0ast_config(without_prior, hparams)
    without_flow = {k: v for k, v in state.items() if not k.startswith("flow.layers.")}
    with pytest.raises(ConversionError, match="not a y0ast/Glow-PyTorch checkpoint"):
        y0ast_config(without_flow, hparams)
    no_steps = {k: v for k, v in state.items() if not k.endswith("actnorm.bias")}
    with pytest.raises(ConversionError, match="0 flow steps do not divide"):
        y0ast_config(no_steps, hparams)
    first = sorted(k for k in state if k.endswith("actnorm.bias"))[0]
    one_less = {k: v for k, v in state.items() if k != first}  # steps no longer a multiple of the levels
    config = y0ast_config(state, hparams)
    with pytest.raises(ConversionError, match=f"{config.levels * config.depth - 1} flow steps do not divide"):
        y0ast_config(one_less, hparams)


@pytest.mark.parametrize("key", ["prior_h", "flow.layers.1.block.0.conv.weight"])
def test_a_y0ast_tensor_that_is_not_4d_is_named(key: str) -> None:
    from glowtorch.convert import ConversionError, load_port_checkpoint, y0ast_config

    state = load_port_checkpoint(FIXTURES / "y0ast_affine_reverse_gray.pt")
    hparams = json.loads((FIXTURES / "y0ast_affine_reverse_gray_hparams.json").read_text())
    assert state[key].dim() == 4
    state[key] = torch.zeros(8)
    with pytest.raises(ConversionError, match=re.escape(f"{key} is (8,), not a 4-d tensor")):
        y0ast_config(state, hparams)
