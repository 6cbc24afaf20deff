"""Latent-space tools on tiny models and synthetic data: exact round trips, grids, interpolation,
directions, manipulation, scores; and their subcommands with bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from conftest import assert_distinct_cells, grid_cells, randomize, tiny_config
from glowtorch import Glow, save_model
from glowtorch.cli import main
from glowtorch.data import step_generator
from glowtorch.distributed import Distributed
from glowtorch.evaluate import score_images
from glowtorch.latent import (
    attribute_directions,
    change_class,
    decode_images,
    encode_images,
    interpolate,
    manipulate,
    mix_latents,
    model_fingerprint,
    slerp,
    standard_noise,
    temperature_grid,
)
from glowtorch.preprocess import dequantize, to_uint8


def pixels(n: int, shape=(1, 8, 8), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def small_model(**overrides) -> Glow:
    torch.manual_seed(0)
    config = tiny_config(image_shape=(1, 8, 8), **overrides)
    model = Glow(config)
    from glowtorch import dequantize

    model.initialize(dequantize(pixels(64, config.image_shape), config.n_bits))
    return randomize(model, scale=0.02)


@pytest.mark.parametrize("n_bits", [8, 5])
def test_encode_decode_round_trip_is_exact(n_bits: int) -> None:
    model = small_model(n_bits=n_bits)
    images = pixels(10)
    zs = encode_images(model, images)
    assert [tuple(z.shape) for z in zs] == [(10, *s) for s in model.latent_shapes]
    expected = (images // 2 ** (8 - n_bits)) * 2 ** (8 - n_bits)
    assert torch.equal(decode_images(model, zs), expected)


def test_temperature_grid_rows() -> None:
    model = small_model()
    grid = temperature_grid(model, [0.0, 0.5, 1.0], per_row=4, generator=torch.Generator().manual_seed(1))
    assert grid.shape == (12, 1, 8, 8) and grid.dtype == torch.uint8
    mode_row = grid[:4].float()
    assert (mode_row - mode_row[0]).abs().max() == 0, "temperature 0 gives the mode: identical samples"
    # Every row is model.sample(per_row, T) from the same seed: the same noise, its own temperature.
    for row, temperature in enumerate([0.0, 0.5, 1.0]):
        alone = model.sample(4, temperature, generator=torch.Generator().manual_seed(1))
        assert torch.equal(grid[4 * row : 4 * row + 4], to_uint8(alone.clamp(-0.5, 0.5), model.config.n_bits))
    assert not torch.equal(grid[4:8], grid[8:])  # the temperature changes the pictures


def test_slerp_properties() -> None:
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    assert_close(slerp(a, b, 0.0), a)
    assert_close(slerp(a, b, 1.0), b)
    unit_a, unit_b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    assert_close(slerp(unit_a, unit_b, 0.3).norm(dim=1), torch.ones(3))
    assert_close(slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel: falls back to linear
    # Vectors of length 3 at 60 degrees: halfway is the direction at 30 degrees, still of length 3.
    at_0, at_60 = torch.tensor([[3.0, 0.0]]), 3.0 * torch.tensor([[0.5, 3**0.5 / 2]])
    assert_close(slerp(at_0, at_60, 0.5), 3.0 * torch.tensor([[3**0.5 / 2, 0.5]]))


def test_mix_latents_follows_the_path_it_is_asked_for() -> None:
    za = [torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 2.0]])]
    zb = [3.0 * torch.tensor([[0.5, 3**0.5 / 2]]), torch.tensor([[3.0, -2.0]])]
    linear = mix_latents(za, zb, [0.5], "linear")
    spherical = mix_latents(za, zb, [0.5], "slerp")
    for level, (a, b) in enumerate(zip(za, zb, strict=True)):
        assert_close(linear[level], (a + b) / 2)
        assert_close(spherical[level], slerp(a, b, 0.5))
    assert not torch.allclose(linear[0], spherical[0])


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolation_ends_are_the_inputs(method: str) -> None:
    model = small_model()
    images = pixels(2, seed=3)
    frames = interpolate(model, images[0], images[1], steps=5, method=method)
    assert frames.shape == (5, 1, 8, 8)
    assert torch.equal(frames[0], images[0]) and torch.equal(frames[-1], images[1])
    assert not torch.equal(frames[2], frames[0]) and not torch.equal(frames[2], frames[-1])
    with pytest.raises(ValueError, match="linear or slerp"):
        interpolate(model, images[0], images[1], method="cubic")


def test_directions_point_the_way_labels_differ() -> None:
    """Images with the attribute are brighter: the direction, decoded, brightens an image."""
    model = small_model()
    dark = pixels(40, seed=1) // 4
    bright = dark + 150
    images = torch.cat([dark, bright])
    attributes = torch.cat([torch.zeros(40), torch.ones(40)]).bool().unsqueeze(1)
    directions = attribute_directions(model, images, attributes)
    zs = encode_images(model, images)
    for direction, z in zip(directions, zs, strict=True):
        expected = z[40:].double().mean(0) - z[:40].double().mean(0)
        assert_close(direction[0], expected.float(), atol=1e-4, rtol=1e-4)
    frames = manipulate(model, dark[0], [d[0] for d in directions], [0.0, 1.0])
    assert torch.equal(frames[0], dark[0])
    assert frames[1].float().mean() > frames[0].float().mean() + 50
    with pytest.raises(ValueError, match="with it and images without"):
        attribute_directions(model, images, torch.ones(80, 1, dtype=torch.bool))


def test_scores_are_per_image_and_separate_datasets() -> None:
    model = small_model()
    noise = pixels(20)
    flat = torch.full((20, 1, 8, 8), 128, dtype=torch.uint8)
    s_noise, s_flat = score_images(model, noise).bits_per_dim, score_images(model, flat).bits_per_dim
    assert s_noise.shape == (20,) and s_noise.dtype == torch.float64
    assert torch.equal(score_images(model, noise).bits_per_dim, s_noise), "fixed seed: repeatable"
    assert s_noise.mean() != s_flat.mean()
    with pytest.raises(ValueError, match="model expects"):
        score_images(model, pixels(2, (3, 8, 8)))


@pytest.mark.parametrize("class_prior", ["channel", "spatial"])
def test_conditional_scores_predict_with_the_latent_classifier_and_with_the_likelihood(class_prior: str) -> None:
    from glowtorch.evaluate import summarize_scores

    model = randomize(Glow(tiny_config(image_shape=(1, 8, 8), num_classes=3, class_prior=class_prior)), 0.3).eval()
    images, labels = pixels(30, seed=4), torch.arange(30) % 3
    scores = score_images(model, images, labels, batch_size=7)
    x = dequantize(images, 8, noise=torch.rand(images.shape, generator=step_generator(1234, 0, stream=100)))
    with torch.no_grad():
        zs, _ = model.encode(x, labels)
        by_class = torch.stack([model.log_prob(x, torch.full((30,), c)) for c in range(3)], 1)
    assert torch.equal(scores.predicted, model.classifier_logits(zs[-1]).argmax(1))
    assert torch.equal(scores.predicted_likelihood, by_class.argmax(1))
    assert (by_class[:, 0] != by_class[:, 1]).all()  # the class changes the likelihood
    summary = summarize_scores(scores, labels)
    assert summary["test_accuracy_likelihood"] == (by_class.argmax(1) == labels).double().mean().item()
    assert score_images(small_model(), images).predicted_likelihood is None


def test_scores_do_not_depend_on_batching_or_processes() -> None:
    """Image i's noise depends on (seed, draw, i) alone: any batch size and any split over processes
    give the same per-image bits/dim, so evaluate (batches of 500) and score agree."""

    class FakeRanks(Distributed):  # each "process" keeps its own part; the sum is the all-reduce
        def all_reduce_sum(self, tensor):
            return tensor

    model = small_model()
    images = pixels(1203, seed=3)
    reference = score_images(model, images, batch_size=500, draws=2, seed=9).bits_per_dim
    # equal up to float32 rounding (convolutions of other batch sizes add in another order)
    assert_close(score_images(model, images, batch_size=37, draws=2, seed=9).bits_per_dim, reference, rtol=1e-6, atol=0)
    parts = [score_images(model, images, batch_size=300, draws=2, seed=9, dist=FakeRanks(r, 3)) for r in range(3)]
    assert all((p.bits_per_dim > 0).sum() < len(images) for p in parts)  # each scored only its share
    assert_close(sum(p.bits_per_dim for p in parts), reference, rtol=1e-6, atol=0)
    other_seed = score_images(model, images, draws=2, seed=10).bits_per_dim
    assert (other_seed - reference).abs().max() > 1e-4  # the noise itself matters far more than rounding


# --------------------------------------------------------------------------- subcommands
@pytest.fixture
def checkpoint(tmp_path):
    return save_model(small_model(), tmp_path / "ckpt")


def write_pngs(directory, images: torch.Tensor) -> list[str]:
    directory.mkdir(exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = directory / f"img{i}.png"
        Image.fromarray(image[0].numpy(), "L").save(path)
        paths.append(str(path))
    return paths


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_encode_decode_commands_round_trip(checkpoint, tmp_path, capsys) -> None:
    images = pixels(3, seed=5)
    paths = write_pngs(tmp_path / "in", images)
    latents = tmp_path / "z.safetensors"
    assert run(capsys, "encode", checkpoint, *paths, "-o", latents)[0] == 0
    assert run(capsys, "decode", latents, "-o", tmp_path / "out")[0] == 0
    for i in range(3):
        back = np.asarray(Image.open(tmp_path / "out" / f"img{i}.png"))
        assert np.array_equal(back, images[i, 0].numpy())


def test_grid_commands_write_pngs(checkpoint, tmp_path, capsys) -> None:
    a, b = write_pngs(tmp_path / "in", pixels(2, seed=7))
    assert (
        run(capsys, "temperatures", checkpoint, "--n", "4", "--temperatures", "0,0.5,1", "-o", tmp_path / "t.png")[0]
        == 0
    )
    rows = grid_cells(tmp_path / "t.png", rows=3, columns=4, side=8).reshape(3, 4, 8, 8)
    assert all((cell == rows[0, 0]).all() for cell in rows[0])  # temperature 0: the mode in every column
    assert_distinct_cells(rows[1:].reshape(8, 8, 8))
    code, _, _ = run(capsys, "interpolate", checkpoint, a, b, "--steps", "6", "--method", "slerp",
                     "-o", tmp_path / "i.png", "--gif", tmp_path / "i.gif")  # fmt: skip
    assert code == 0
    strip = grid_cells(tmp_path / "i.png", rows=1, columns=6, side=8)
    assert_distinct_cells(strip)
    ends = [np.asarray(Image.open(p)) for p in (a, b)]
    assert (strip[0] == ends[0]).all() and (strip[-1] == ends[1]).all()  # the path starts and ends exactly
    gif = Image.open(tmp_path / "i.gif")
    assert gif.n_frames == 10  # 6 forth + 4 back


def test_directions_and_manipulate_commands(tmp_path, capsys) -> None:
    from test_data import make_mnist

    make_mnist(tmp_path / "mnist", n=30)
    torch.manual_seed(0)
    model = Glow(tiny_config(image_shape=(1, 28, 28), depth=1))
    from glowtorch import dequantize

    model.initialize(dequantize(pixels(32, (1, 28, 28)), 8))
    ckpt = save_model(model, tmp_path / "m")
    directions = tmp_path / "d.safetensors"
    code, out, _ = run(
        capsys, "directions", ckpt, "--dataset", "mnist", "--data-dir", tmp_path / "mnist", "-o", directions
    )
    assert code == 0 and "10 attribute directions" in out
    image = tmp_path / "x.png"
    Image.fromarray(pixels(1, (1, 28, 28))[0, 0].numpy(), "L").save(image)
    code, _, _ = run(capsys, "manipulate", ckpt, image, "--direction", directions, "--attribute", "3",
                     "--scales", "-1,0,1", "-o", tmp_path / "m.png")  # fmt: skip
    assert code == 0 and Image.open(tmp_path / "m.png").size == (3 * 30 + 2, 32)
    code, _, err = run(capsys, "manipulate", ckpt, image, "--direction", directions, "--attribute", "Smiling")
    assert code == 1 and "unknown attribute 'Smiling'" in err
    other = save_model(randomize(model, 0.01), tmp_path / "other")
    code, _, err = run(capsys, "manipulate", other, image, "--direction", directions, "--attribute", "3")
    assert code == 1 and "another model" in err


def test_score_and_plot_commands(tmp_path, capsys) -> None:
    from test_cli import TINY

    run_dir = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--steps", "3", "--out", str(run_dir), *TINY]) == 0
    folder = tmp_path / "folder"
    write_pngs(folder, pixels(12, seed=9))
    csv_path = tmp_path / "scores.csv"
    code, out, _ = run(capsys, "score", run_dir, "--dataset", "digits", "--dataset", f"folder={folder}",
                       "--limit", "50", "-o", csv_path)  # fmt: skip
    assert code == 0
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "dataset,index,bits_per_dim"
    assert len(lines) == 1 + 50 + 1  # folder: every 10th image is the test split, so 12 images give 1
    assert (tmp_path / "scores.png").is_file()
    # evaluate and score are one computation: the same model, data and seed give the same bits/dim
    code, _, _ = run(capsys, "score", run_dir, "--dataset", "digits", "--seed", "7", "--batch-size", "64",
                     "-o", tmp_path / "all.csv")  # fmt: skip
    everything = [float(line.split(",")[2]) for line in (tmp_path / "all.csv").read_text().splitlines()[1:]]
    code, out, _ = run(capsys, "evaluate", run_dir, "--dataset", "digits", "--seed", "7", "--no-progress")
    assert code == 0 and len(everything) == 297
    assert float(out.split(":")[1].split()[0]) == pytest.approx(sum(everything) / len(everything), abs=1e-4)
    assert run(capsys, "plot", run_dir, "-o", tmp_path / "p.png")[0] == 0
    assert Image.open(tmp_path / "p.png").size[0] > 500


def test_latent_command_bad_input(checkpoint, tmp_path, capsys) -> None:
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), "RGB").save(rgb)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(big)
    junk = tmp_path / "junk.png"
    junk.write_text("no image")
    for path, message in ((rgb, "colour image"), (big, "16x16"), (junk, "not a readable image")):
        code, _, err = run(capsys, "encode", checkpoint, path, "-o", tmp_path / "z.safetensors")
        assert code == 1 and message in err and err.count("\n") == 1
    assert not (tmp_path / "z.safetensors").exists()
    good = write_pngs(tmp_path / "in", pixels(1))
    latents = tmp_path / "z.safetensors"
    assert run(capsys, "encode", checkpoint, *good, "-o", latents)[0] == 0
    other = save_model(Glow(tiny_config(image_shape=(1, 8, 8), hidden_channels=4)), tmp_path / "other")
    code, _, err = run(capsys, "decode", latents, "--checkpoint", other, "-o", tmp_path / "dec")
    assert code == 1 and "another model" in err
    code, _, err = run(capsys, "temperatures", checkpoint, "--label", "2")
    assert code == 1 and "class-conditional" in err
    code, _, err = run(capsys, "score", checkpoint, "--dataset", "nope")
    assert code == 1 and "unknown dataset" in err
    assert json.loads((checkpoint / "config.json").read_text())["image_shape"] == [1, 8, 8]


def test_fingerprint_changes_with_weights() -> None:
    model = small_model()
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    with torch.no_grad():
        model.top_prior.add_(1e-3)
    assert model_fingerprint(model) != before


def test_celeba_attribute_directions_command(checkpoint, tmp_path, capsys) -> None:
    """CelebA layout with attributes: images are resized to the model, each attribute gets a direction."""
    from test_data import write_png

    names = [f"{i:06d}.jpg" for i in range(1, 21)]
    for i, name in enumerate(names):
        write_png(tmp_path / "celeba" / "img_align_celeba" / name, (20, 24), value=40 + 10 * i)
    rows = "\n".join(f"{n} {'1' if i % 2 else '-1'} {'1' if i < 10 else '-1'}" for i, n in enumerate(names))
    (tmp_path / "celeba" / "list_attr_celeba.txt").write_text(f"{len(names)}\nSmiling Male\n{rows}\n")
    # A grayscale model on colour CelebA is refused; an RGB 8x8 model works.
    code, _, err = run(capsys, "directions", checkpoint, "--dataset", "celeba", "--data-dir", tmp_path / "celeba")
    assert code == 1 and "expects (1, 8, 8)" in err
    torch.manual_seed(0)
    model = Glow(tiny_config(image_shape=(3, 8, 8)))
    from glowtorch import dequantize

    model.initialize(dequantize(pixels(32, (3, 8, 8)), 8))
    rgb = save_model(model, tmp_path / "rgb")
    out = tmp_path / "celeba-directions.safetensors"
    code, text, _ = run(capsys, "directions", rgb, "--dataset", "celeba", "--data-dir", tmp_path / "celeba", "-o", out)
    assert code == 0 and "2 attribute directions" in text
    face = tmp_path / "face.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8), "RGB").save(face)
    code, _, _ = run(capsys, "manipulate", rgb, face, "--direction", out, "--attribute", "Smiling",
                     "-o", tmp_path / "smile.png")  # fmt: skip
    assert code == 0 and Image.open(tmp_path / "smile.png").size == (5 * 10 + 2, 12)


def test_standard_noise_is_what_sampling_turns_into_the_latents() -> None:
    model = randomize(Glow(tiny_config(num_classes=3)).double(), scale=0.1).eval()
    y = torch.tensor([0, 2, 1])
    zs, x = model.sample_with_latents(3, 0.7, y=y, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    noise = standard_noise(model, zs, y)
    with torch.no_grad():
        again, x_again = model.sample_from_noise(noise, [1.0] * len(zs), y)
        at_zero = model.sample_from_noise([torch.zeros_like(n) for n in noise], [1.0] * len(zs), y)[0]
    for z, z_again in zip(zs, again, strict=True):
        assert_close(z_again, z, rtol=1e-10, atol=1e-10)
    assert_close(x_again, x, rtol=1e-10, atol=1e-10)
    assert_close(at_zero[-1], model.top_prior_params(3, y)[0])  # zero noise: the prior's mean


def test_change_class_keeps_the_image_under_its_own_class_and_changes_it_under_others() -> None:
    model = randomize(Glow(tiny_config(image_shape=(1, 4, 4), num_classes=3)), scale=0.2).eval()
    image = torch.randint(0, 256, (1, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    zs = encode_images(model, image, torch.tensor([1]))
    row = change_class(model, zs, torch.tensor(1), torch.arange(3))
    assert row.shape == (3, 1, 4, 4) and torch.equal(row[1], image[0])
    assert not torch.equal(row[0], image[0]) and not torch.equal(row[2], image[0])
    with pytest.raises(ValueError, match="class-conditional"):
        change_class(randomize(Glow(tiny_config(image_shape=(1, 4, 4)))), zs, torch.tensor(0), torch.arange(2))


def test_a_round_trip_that_overflows_in_float32_is_recomputed_in_float64(monkeypatch) -> None:
    """Seen on a trained MNIST model: one test image whose float32 inverse gave NaN (its float64 round
    trip is off by 3e-5). A NaN error compares false with the tolerance, so it must count as off."""
    from glowtorch.latent import round_trip_report

    model = randomize(Glow(tiny_config(image_shape=(1, 4, 4))), scale=0.1).eval()
    images = torch.randint(0, 256, (3, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    plain_decode = model.decode

    def overflowing_decode(zs, y=None, *, context=None):  # the float32 model fails on image 1; its float64 twin not
        x = plain_decode(zs, y, context=context)
        return x.index_fill(0, torch.tensor([1]), float("nan")) if len(x) == 3 else x

    monkeypatch.setattr(model, "decode", overflowing_decode)
    zs = encode_images(model, images)
    assert zs[0].dtype == torch.float64  # recomputed in float64
    assert torch.equal(decode_images(model, zs), images)
    report = round_trip_report(model, images)
    assert report["float64_images"] == 1 and report["worst_image"] == 1 and report["worst_error"] == float("inf")
    assert report["exact_wrong_pixels"] == 0
