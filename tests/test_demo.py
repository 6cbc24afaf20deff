"""The demo's computations without a browser: input images, sampling, reading, paths, edits, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import randomize
from glowtorch import Glow, GlowConfig
from glowtorch.demo import DemoError, Explorer, prepare_image, show
from glowtorch.demo.explorer import READ_DRAWS
from glowtorch.evaluate import score_images
from glowtorch.latent import write_directions
from glowtorch.latent_files import model_fingerprint, save_latents
from glowtorch.validation import MAX_SEED


def mnist_like_model(num_classes: int = 0, seed: int = 0) -> Glow:
    torch.manual_seed(seed)
    config = GlowConfig(image_shape=(1, 28, 28), levels=2, depth=1, hidden_channels=8, num_classes=num_classes)
    return randomize(Glow(config), scale=0.05, seed=seed).eval()


def digit(value: int = 255) -> torch.Tensor:
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[0, 6:22, 13:15] = value
    return image


@pytest.fixture(scope="module")
def explorer() -> Explorer:
    model = mnist_like_model()
    examples = torch.stack([digit(), digit(200), digit(120)])
    scores = torch.linspace(1.0, 3.0, 1000)
    directions = {
        "up": [torch.ones(s) * 0.1 for s in model.latent_shapes],
        "down": [-torch.ones(s) * 0.1 for s in model.latent_shapes],
    }  # noqa: E501
    return Explorer(model, "tiny", scores, examples, directions)


# --------------------------------------------------------------------------- input images
def test_an_image_of_the_models_size_and_mode_is_taken_as_is() -> None:
    array = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    image, note = prepare_image(array, (1, 28, 28))
    assert note == "used as is" and (image[0].numpy() == array).all()
    rgb_gray = np.repeat(array[..., None], 3, axis=2)  # a grayscale PNG saved as RGB is still that image
    assert (prepare_image(rgb_gray, (1, 28, 28))[0][0].numpy() == array).all()


def test_a_drawing_is_brought_to_mnist_form() -> None:
    pad = np.zeros((280, 280, 4), np.uint8)  # black strokes on a transparent pad, off-centre and small
    pad[20:100, 30:40] = (0, 0, 0, 255)
    image, note = prepare_image({"composite": pad}, (1, 28, 28))
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and "28x28" in note
    ink = image[0].double()
    assert ink.max() > 200 and ink[0].sum() == 0 and ink[:, 0].sum() == 0  # white on black, margins empty
    rows, cols = torch.nonzero(ink > 50, as_tuple=True)
    assert rows.max() - rows.min() + 1 in range(17, 22)  # the stroke's height scaled into the central 20 pixels
    mass_row = (ink.sum(1) * torch.arange(28)).sum() / ink.sum()
    mass_col = (ink.sum(0) * torch.arange(28)).sum() / ink.sum()
    assert abs(mass_row - 14) < 1.5 and abs(mass_col - 14) < 1.5


def test_uploads_of_another_size_or_colour_are_converted_and_said_so(tmp_path) -> None:
    picture = np.full((90, 60, 3), 255, np.uint8)  # dark digit on white, colour, another size
    picture[20:70, 25:35] = (10, 20, 200)
    Image.fromarray(picture).save(tmp_path / "upload.jpg")
    image, note = prepare_image(str(tmp_path / "upload.jpg"), (1, 28, 28))
    assert image.shape == (1, 28, 28) and "60x90" in note and image.max() > 100 and image[0, 0, 0] == 0
    colour, note = prepare_image(picture, (3, 16, 16))  # a colour model: centre crop and resize
    assert colour.shape == (3, 16, 16) and "centre-cropped" in note


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "no image"),
        ({"composite": np.zeros((280, 280, 4), np.uint8)}, "drawing is empty"),
        ({"composite": np.full((280, 280, 4), 255, np.uint8)}, "drawing is empty"),
        (np.zeros((5000, 5000), np.uint8), "under 4096x4096"),
        (np.zeros((28, 28, 7), np.uint8), "expected an image"),
    ],
)
def test_bad_images_are_refused_with_a_message(value, message: str) -> None:
    with pytest.raises(DemoError, match=message):
        prepare_image(value, (1, 28, 28))


def test_a_file_that_is_not_an_image_is_refused(tmp_path) -> None:
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(DemoError, match="not a readable image"):
        prepare_image(str(tmp_path / "notes.png"), (1, 28, 28))


# --------------------------------------------------------------------------- the explorer
def test_samples_follow_temperature_and_seed(explorer) -> None:
    cold, warm = explorer.sample(0.0, seed=1, n=8), explorer.sample(1.0, seed=1, n=8)
    assert cold.shape == (8, 1, 28, 28) and cold.dtype == torch.uint8
    assert (cold == cold[0]).all() and not (warm == warm[0]).all()  # temperature 0 is the prior's mode
    assert torch.equal(explorer.sample(0.7, seed=3, n=4), explorer.sample(0.7, seed=3, n=4))
    assert not torch.equal(explorer.sample(0.7, seed=3, n=4), explorer.sample(0.7, seed=4, n=4))
    per_level = explorer.sample(0.7, seed=1, n=8, level_temperatures="0, 0")
    assert torch.equal(per_level, cold)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 1.5}, "between 0 and 1"),
        ({"temperature": float("nan")}, "finite"),
        ({"temperature": "warm"}, "must be a number"),
        ({"temperature": 0.5, "level_temperatures": "0.5"}, "give 2 per-level"),
        ({"temperature": 0.5, "level_temperatures": "a,b"}, "separated by commas"),
        ({"temperature": 0.5, "n": 500}, "1 to 64"),
    ],
)
def test_out_of_range_sampling_values_are_refused(explorer, kwargs, message: str) -> None:
    with pytest.raises(DemoError, match=message):
        explorer.sample(**kwargs)


def test_reading_an_image_reconstructs_it_exactly_and_places_its_score(explorer) -> None:
    image = explorer.examples[1]
    reading = explorer.read(image)
    assert torch.equal(reading.reconstruction, image)
    assert np.isfinite(reading.bits_per_dim) and 0 <= reading.percentile <= 100
    # the one scoring function's value, the page's number of draws
    scored = score_images(explorer.model, image.unsqueeze(0), draws=READ_DRAWS).bits_per_dim[0].item()
    assert reading.bits_per_dim == scored
    expected = 100.0 * float((explorer.test_scores < reading.bits_per_dim).sum()) / len(explorer.test_scores)
    assert reading.percentile == pytest.approx(expected, abs=0.2)
    picture = explorer.histogram(reading.bits_per_dim)
    assert picture.ndim == 3 and ((picture == (220, 30, 30)).all(axis=2)).any()  # the marker is drawn
    assert not ((explorer.histogram(None) == (220, 30, 30)).all(axis=2)).any()


def test_the_verdict_separates_usual_and_unusual_scores() -> None:
    model = mnist_like_model()
    reading = Explorer(model, "m").read(digit())
    assert reading.percentile is None and "--dataset" in reading.verdict
    low = Explorer(model, "m", torch.full((100,), reading.bits_per_dim + 1.0)).read(digit())
    high = Explorer(model, "m", torch.full((100,), reading.bits_per_dim - 1.0)).read(digit())
    assert low.verdict.startswith("in distribution") and high.verdict.startswith("out of distribution")


@pytest.mark.parametrize(
    "bpd, verdict, percentile",
    [
        (989.0, "in distribution: 98.9%", 98.9),  # at the 99th percentile, index int(0.99 * 999) = 989
        (989.5, "unusual: more bits/dim than 99.0%", 99.0),
        (998.0, "unusual: more bits/dim than 99.8%", 99.8),  # at the 99.9th, index 998
        (998.5, "out of distribution: more bits/dim than 99.90%", 99.9),
        (-5.0, "in distribution: 0.0%", 0.0),
        (5000.0, "out of distribution: more bits/dim than 100.00%", 100.0),
    ],
)
def test_the_verdicts_boundaries_by_hand(monkeypatch, bpd: float, verdict: str, percentile: float) -> None:
    import glowtorch.demo.explorer as explorer_module
    from glowtorch.evaluate import ImageScores

    model = mnist_like_model()
    scores = torch.arange(1000, dtype=torch.float64).flip(0)  # 0..999, given in any order
    monkeypatch.setattr(explorer_module, "score_images", lambda *a, **k: ImageScores(torch.tensor([bpd])))
    reading = Explorer(model, "m", scores).read(digit())
    assert reading.verdict.startswith(verdict) and reading.percentile == pytest.approx(percentile)


def test_a_colour_image_is_read_as_one_image() -> None:
    torch.manual_seed(0)
    model = randomize(Glow(GlowConfig(image_shape=(3, 8, 8), levels=2, depth=1, hidden_channels=8)), scale=0.05)
    image = torch.randint(0, 256, (3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    reading = Explorer(model.eval(), "rgb").read(image)
    expected = score_images(model, image.unsqueeze(0), draws=READ_DRAWS).bits_per_dim[0].item()
    assert reading.bits_per_dim == expected and torch.equal(reading.reconstruction, image)


def test_a_one_class_model_is_conditional_and_blank_level_temperatures_mean_the_slider() -> None:
    assert Explorer(mnist_like_model(num_classes=1), "one").conditional
    explorer = Explorer(mnist_like_model(), "m")
    assert torch.equal(explorer.sample(0.5, seed=2, n=3, level_temperatures="  "), explorer.sample(0.5, seed=2, n=3))


def test_the_histogram_marker_is_a_red_line_kept_inside_the_picture(explorer) -> None:
    def red_columns(picture: np.ndarray) -> list[int]:
        red = (picture[..., 0] == 220) & (picture[..., 1] == 30) & (picture[..., 2] == 30)
        return np.nonzero(red.any(0))[0].tolist()

    plain = explorer.histogram()
    width = plain.shape[1]
    assert red_columns(plain) == [] and red_columns(explorer.histogram(float("nan"))) == []
    left, right = red_columns(explorer.histogram(-1e9)), red_columns(explorer.histogram(1e9))
    assert left == red_columns(explorer.histogram(-1e3)) and right == red_columns(
        explorer.histogram(1e3)
    )  # at the axis' ends
    middle = red_columns(explorer.histogram(2.0))
    assert [len(left), len(middle), len(right)] == [2, 2, 2] and middle[1] == middle[0] + 1
    assert 0 <= left[0] < middle[0] < right[0] <= width - 2


def test_interpolation_starts_and_ends_at_its_images(explorer) -> None:
    a, b = explorer.examples[0], explorer.examples[2]
    start, strip = explorer.interpolate(a, b, 0.0, "slerp")
    end, _ = explorer.interpolate(a, b, 1.0, "linear")
    middle, _ = explorer.interpolate(a, b, 0.5, "linear")
    assert torch.equal(start, a) and torch.equal(end, b) and strip.shape == (9, 1, 28, 28)
    assert torch.equal(strip[0], a) and torch.equal(strip[-1], b)
    assert not torch.equal(middle, a) and not torch.equal(middle, b)
    with pytest.raises(DemoError, match="between 0 and 1"):
        explorer.interpolate(a, b, 2.0)
    with pytest.raises(DemoError, match="linear or slerp"):
        explorer.interpolate(a, b, 0.5, "cubic")


def test_edits_move_along_the_directions(explorer) -> None:
    image = explorer.examples[0]
    assert torch.equal(explorer.edit(image, {"up": 0.0, "down": 0.0}), image)
    moved = explorer.edit(image, {"up": 2.0})
    assert not torch.equal(moved, image)
    assert torch.equal(explorer.edit(image, {"up": 1.0, "down": 1.0}), image)  # opposite directions cancel
    with pytest.raises(DemoError, match="no direction named"):
        explorer.edit(image, {"sideways": 1.0})
    with pytest.raises(DemoError, match="within -10 to 10"):
        explorer.edit(image, {"up": 50.0})


def test_an_edit_adds_amount_times_direction_to_each_latent(explorer) -> None:
    from glowtorch.latent import decode_images, encode_images

    image = explorer.examples[1]
    zs = encode_images(explorer.model, image.unsqueeze(0))
    by_hand = [z + 1.5 * d - 0.5 * e for z, d, e in zip(zs, explorer.directions["up"], explorer.directions["down"],
                                                         strict=True)]  # fmt: skip
    expected = decode_images(explorer.model, by_hand)[0]
    assert torch.equal(explorer.edit(image, {"up": 1.5, "down": -0.5}), expected)
    assert not torch.equal(expected, image)
    assert torch.equal(explorer.edit(image, {"up": 10.0}), explorer.edit(image, {"down": -10.0}))  # the limit
    with pytest.raises(DemoError, match="within -10 to 10"):
        explorer.edit(image, {"up": -10.5})


def test_the_most_samples_the_page_asks_for(explorer) -> None:
    from glowtorch.demo import MAX_SAMPLES

    assert len(explorer.sample(0.5, n=MAX_SAMPLES)) == MAX_SAMPLES and len(explorer.sample(0.5, n=1)) == 1
    for n in (0, MAX_SAMPLES + 1):
        with pytest.raises(DemoError, match=f"1 to {MAX_SAMPLES}"):
            explorer.sample(0.5, n=n)


def test_a_model_folder_with_its_own_reference_files_and_the_shipped_superres(tmp_path) -> None:
    from glowtorch import save_model
    from glowtorch.reference import write_test_scores

    model = mnist_like_model()
    folder = save_model(model, tmp_path / "model")
    write_test_scores(folder / "test_scores.safetensors", torch.linspace(1, 2, 50), torch.stack([digit()] * 4), "t")
    write_directions(folder / "directions.safetensors", model, [torch.ones(1, *s) for s in model.latent_shapes],
                     ["7"], "mnist")  # fmt: skip
    explorer = Explorer.from_checkpoint(folder, "digits")  # files beside the weights: the dataset is not read
    assert not (folder / "demo").exists() and len(explorer.test_scores) == 50 and list(explorer.directions) == ["7"]
    assert explorer.superres is not None and explorer.superres.config.condition == "lowres:4"  # pretrained:mnist-sr4
    assert Explorer.from_checkpoint(folder, superres=None).superres is None
    small = save_model(randomize(Glow(GlowConfig(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=8))),
                       tmp_path / "small")  # fmt: skip
    assert Explorer.from_checkpoint(small).superres is None  # auto: only beside models of its own images


def test_scores_without_directions_are_completed_from_the_dataset(tmp_path) -> None:
    from glowtorch import save_model
    from glowtorch.reference import write_test_scores

    torch.manual_seed(0)
    model = randomize(Glow(GlowConfig(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=8)), scale=0.05)
    folder = save_model(model, tmp_path / "model")
    write_test_scores(folder / "test_scores.safetensors", torch.linspace(1, 2, 50), torch.zeros(2, 1, 8, 8,
                      dtype=torch.uint8), "t")  # fmt: skip
    explorer = Explorer.from_checkpoint(folder, "digits", progress=False)
    assert (folder / "demo" / "directions.safetensors").is_file() and len(explorer.directions) == 10


def test_a_directions_file_of_another_model_is_refused(explorer, tmp_path) -> None:
    other = mnist_like_model(seed=1)
    directions = [torch.zeros(1, *s) for s in other.latent_shapes]
    write_directions(tmp_path / "other.safetensors", other, directions, ["x"], "mnist")
    before = dict(explorer.directions)
    with pytest.raises(DemoError, match="another model"):
        explorer.load_directions(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(DemoError, match="not a readable safetensors file"):
        explorer.load_directions(tmp_path / "junk.safetensors")
    assert explorer.directions == before
    write_directions(tmp_path / "own.safetensors", explorer.model, directions, ["x"], "mnist")
    try:
        assert explorer.load_directions(tmp_path / "own.safetensors") == ["x"]
    finally:
        explorer.directions = before


def hostile_directions(path, model: Glow, tensors: dict, attributes: str) -> None:
    """A directions file that claims ``model`` (its fingerprint) but holds what ``tensors`` say."""
    metadata = {"glowtorch": "directions", "model_fingerprint": model_fingerprint(model), "attributes": attributes}
    save_latents(path, tensors, metadata)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: {"z0": d[0].clone().fill_(float("nan")), "z1": d[1]}, "not finite numbers"),
        (lambda d: {"z0": d[0], "z1": d[1].clone().fill_(float("inf"))}, "not finite numbers"),
        (lambda d: {"z0": d[0].long(), "z1": d[1]}, "not finite numbers"),
        (lambda d: {"z0": d[0]}, "where this model needs"),  # a level missing
        (lambda d: {"z0": d[0][:1], "z1": d[1][:1]}, "where this model needs"),  # fewer than its attributes
        (lambda d: {"z0": d[0].flatten(1), "z1": d[1]}, "where this model needs"),
        (lambda d: {"z0": d[0], "z1": d[1], "z2": d[1].clone()}, "where this model needs"),  # a level too many
    ],
)
def test_an_uploaded_directions_file_is_checked_before_any_slider_uses_it(explorer, tmp_path, change, message):
    directions = [torch.zeros(2, *s) for s in explorer.model.latent_shapes]
    hostile_directions(tmp_path / "d.safetensors", explorer.model, change(directions), '["a", "b"]')
    before = dict(explorer.directions)
    with pytest.raises(DemoError, match=message):
        explorer.load_directions(tmp_path / "d.safetensors")
    assert explorer.directions == before  # the sliders keep working on the directions they had


@pytest.mark.parametrize("attributes", ['"a"', "[]", '["a", "a"]', '["a", 3]', '["a", ""]', "{", '{"a": 1}'])
def test_a_directions_file_must_name_distinct_attributes(explorer, tmp_path, attributes: str) -> None:
    directions = [torch.zeros(2, *s) for s in explorer.model.latent_shapes]
    hostile_directions(tmp_path / "d.safetensors", explorer.model, {"z0": directions[0], "z1": directions[1]},
                       attributes)  # fmt: skip
    with pytest.raises(DemoError, match="does not name its attributes"):
        explorer.load_directions(tmp_path / "d.safetensors")


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**64, 1e30, 2.5, float("nan"), "x", True])
def test_a_seed_a_generator_cannot_take_is_refused_with_a_message(explorer, seed) -> None:
    with pytest.raises(DemoError, match="seed must be"):
        explorer.sample(0.5, seed=seed, n=2)


def test_seeds_up_to_the_largest_are_taken(explorer) -> None:
    largest = explorer.sample(0.5, seed=MAX_SEED, n=2)
    assert torch.equal(largest, explorer.sample(0.5, seed=MAX_SEED, n=2))
    assert torch.equal(explorer.sample(0.5, seed=3.0, n=2), explorer.sample(0.5, seed=3, n=2))
    assert not torch.equal(largest, explorer.sample(0.5, seed=MAX_SEED - 1, n=2))


def test_same_handwriting_another_digit() -> None:
    model = mnist_like_model(num_classes=10)
    conditional = Explorer(model, "c")
    image = digit()
    row = conditional.relabel(image, 1)
    assert row.shape == (10, 1, 28, 28) and torch.equal(row[1], image)  # under its own label: itself
    assert len({bytes(r.numpy()) for r in row}) > 1
    with pytest.raises(DemoError, match="pick a class"):
        conditional.relabel(image, 12)
    with pytest.raises(DemoError, match="not class-conditional"):
        Explorer(mnist_like_model(), "u").relabel(image, 1)


def test_show_enlarges_pixels() -> None:
    from glowtorch.demo import DISPLAY

    picture = show(torch.stack([digit(), digit()]), columns=2)
    assert picture.dtype == np.uint8 and picture.shape == ((28 + 2) * DISPLAY, (2 * 28 + 3) * DISPLAY)
    single = show(digit().unsqueeze(0))
    assert (single[::DISPLAY, ::DISPLAY] == digit()[0].numpy()).all()


def test_a_folder_model_computes_its_scores_and_directions_once(tmp_path, monkeypatch) -> None:
    import glowtorch.evaluate
    from glowtorch import save_model

    torch.manual_seed(0)
    config = GlowConfig(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=8)
    save_model(randomize(Glow(config), scale=0.05), tmp_path / "model")
    bare = Explorer.from_checkpoint(tmp_path / "model")  # nothing cached, no dataset: a page without them
    assert bare.test_scores is None and bare.examples is None and bare.directions == {}
    explorer = Explorer.from_checkpoint(tmp_path / "model", "digits", progress=False)
    assert sorted(p.name for p in (tmp_path / "model" / "demo").iterdir()) == [
        "directions.safetensors",
        "test_scores.safetensors",
    ]
    assert explorer.test_scores is not None and torch.isfinite(explorer.test_scores).all()
    assert list(explorer.directions) == [str(i) for i in range(10)] and len(explorer.examples) == 32

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored again")

    monkeypatch.setattr(glowtorch.evaluate, "score_images", no_scoring)
    again = Explorer.from_checkpoint(tmp_path / "model", "digits")
    assert torch.equal(again.test_scores, explorer.test_scores)


@pytest.mark.parametrize("num_classes", [0, 10])
def test_the_page_builds_for_both_kinds_of_model(num_classes: int) -> None:
    gr = pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]'")
    from glowtorch.demo import MAX_SLIDERS, build_app

    model = mnist_like_model(num_classes=num_classes)
    directions = {str(i): [torch.zeros(s) for s in model.latent_shapes] for i in range(10)}
    app = build_app(Explorer(model, "tiny", torch.linspace(1, 3, 100), torch.stack([digit()] * 3), directions))
    components = {c.elem_id: c for c in app.blocks.values() if getattr(c, "elem_id", None)}
    assert isinstance(app, gr.Blocks) and {"samples", "reconstruction", "frame", "edited"} <= set(components)
    assert components["label"].visible == bool(num_classes) and components["relabel"].visible == bool(num_classes)
    assert sum(components[f"direction-{i}"].visible for i in range(MAX_SLIDERS)) == 10


# --------------------------------------------------------------------------- super-resolve


def sr_model(seed: int = 1) -> Glow:
    torch.manual_seed(seed)
    config = GlowConfig(image_shape=(1, 28, 28), levels=2, depth=1, hidden_channels=8, condition="lowres:4",
                        context_features=4)  # fmt: skip
    return randomize(Glow(config), scale=0.05, seed=seed).eval()


def test_superresolve_samples_given_the_images_low_resolution_version() -> None:
    from glowtorch.context import lowres_images

    model = sr_model()
    explorer = Explorer(mnist_like_model(), "tiny", superres=model)
    image = digit()
    result = explorer.superresolve(image, 0.6, seed=3, n=6)
    assert result.lowres.tolist() == lowres_images(image.unsqueeze(0), 4)[0].tolist()  # 7x7
    assert result.samples.shape == (6, 1, 28, 28) and result.samples.dtype == torch.uint8
    expected = model.sample(6, 0.6, generator=torch.Generator().manual_seed(3),
                            context=model.config.context_of(image.unsqueeze(0)))  # fmt: skip
    assert result.samples.tolist() == torch.floor((expected.clamp(-0.5, 0.5) + 0.5) * 256).clamp(0, 255).byte().tolist()
    # each sample's bits/dim given the context, scored as every reported likelihood is
    context = model.config.context_of(image.unsqueeze(0)).expand(7, -1, -1, -1)
    both = torch.cat([image.unsqueeze(0), result.samples])
    scores = score_images(model, both, draws=READ_DRAWS, contexts=context).bits_per_dim
    assert result.bits_per_dim.tolist() == scores[1:].tolist() and result.image_bits_per_dim == scores[0].item()
    own = score_images(model, result.samples, draws=READ_DRAWS).bits_per_dim  # each under its own 7x7 version
    assert not torch.allclose(own, scores[1:])
    again = explorer.superresolve(image, 0.6, seed=3, n=6)
    assert again.samples.tolist() == result.samples.tolist()
    modes = explorer.superresolve(image, 0.0, n=3).samples
    assert (modes == modes[0]).all()
    other = explorer.superresolve(digit(90), 0.0, n=1).samples
    assert not (other[0] == modes[0]).all()  # another context, another mode


def test_superresolve_a_colour_image() -> None:
    from glowtorch.context import lowres_images

    torch.manual_seed(0)
    config = GlowConfig(image_shape=(3, 8, 8), levels=2, depth=1, hidden_channels=8, condition="lowres:2",
                        context_features=4)  # fmt: skip
    model = randomize(Glow(config), scale=0.05, seed=1).eval()
    main = randomize(Glow(GlowConfig(image_shape=(3, 8, 8), levels=2, depth=1, hidden_channels=8)), scale=0.05)
    image = torch.randint(0, 256, (3, 8, 8), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    result = Explorer(main.eval(), "rgb", superres=model).superresolve(image, 0.5, seed=1, n=2)
    assert torch.equal(result.lowres, lowres_images(image.unsqueeze(0), 2)[0]) and result.lowres.shape == (3, 4, 4)
    context = model.config.context_of(image.unsqueeze(0))
    both = torch.cat([image.unsqueeze(0), result.samples])
    scores = score_images(model, both, draws=READ_DRAWS, contexts=context.expand(3, -1, -1, -1)).bits_per_dim
    assert result.bits_per_dim.tolist() == scores[1:].tolist() and result.image_bits_per_dim == scores[0].item()


def test_superresolve_refuses_bad_values_and_models() -> None:
    explorer = Explorer(mnist_like_model(), "tiny", superres=sr_model())
    for kwargs, message in [({"temperature": 1.5}, "temperature"), ({"temperature": 0.5, "n": 0}, "number of samples")]:
        with pytest.raises(DemoError, match=message):
            explorer.superresolve(digit(), **kwargs)
    with pytest.raises(DemoError, match="no super-resolution model"):
        Explorer(mnist_like_model(), "tiny").superresolve(digit(), 0.5)
    with pytest.raises(ValueError, match="Super-resolve tab"):
        Explorer(sr_model(), "sr")
    with pytest.raises(ValueError, match="conditioned on 'lowres:F'"):
        Explorer(mnist_like_model(), "tiny", superres=mnist_like_model(seed=2))


def test_the_page_has_a_super_resolve_tab_with_a_super_resolution_model() -> None:
    pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]'")
    from glowtorch.demo import build_app

    def ids(explorer: Explorer) -> set[str]:
        return {c.elem_id for c in build_app(explorer).blocks.values() if getattr(c, "elem_id", None)}

    assert {"sr-pad", "sr-upload", "sr-pick", "sr-temperature", "superres", "sr-lowres", "sr-samples"} <= ids(
        Explorer(mnist_like_model(), "tiny", superres=sr_model())
    )
    assert "superres" not in ids(Explorer(mnist_like_model(), "tiny"))


# --------------------------------------------------------------------------- serving
def served(monkeypatch, capsys, argv: list[str]) -> tuple[dict, str]:
    """``glowtorch demo ARGV`` up to the point of serving: what ``launch`` was given, and stderr."""
    pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]'")
    import glowtorch.demo as demo
    from glowtorch.cli import main

    given: dict = {}
    monkeypatch.setattr(demo.Explorer, "from_checkpoint", classmethod(lambda cls, *a, **k: None))
    monkeypatch.setattr(demo, "launch", lambda explorer, host, port, quiet, auth: given.update(host=host, auth=auth))
    monkeypatch.delenv("GLOWTORCH_DEMO_AUTH", raising=False)
    assert main(["demo", *argv]) == 0
    return given, capsys.readouterr().err


def test_serving_beyond_this_machine_is_warned_of(monkeypatch, capsys) -> None:
    given, err = served(monkeypatch, capsys, ["--host", "0.0.0.0"])
    assert given == {"host": "0.0.0.0", "auth": None}
    assert "warning: --host 0.0.0.0 serves the page to other machines, with no login: add --auth" in err
    for local in ("127.0.0.1", "localhost", "::1"):
        assert served(monkeypatch, capsys, ["--host", local])[1] == ""


def test_a_password_is_asked_for_when_given(monkeypatch, capsys) -> None:
    given, err = served(monkeypatch, capsys, ["--auth", "ann:pass:word"])
    assert given["auth"] == ("ann", "pass:word") and err == ""  # the password may hold colons
    monkeypatch.setenv("GLOWTORCH_DEMO_AUTH", "bob:secret")
    import glowtorch.demo as demo
    from glowtorch.cli import main

    seen: dict = {}
    monkeypatch.setattr(demo, "launch", lambda explorer, host, port, quiet, auth: seen.update(auth=auth))
    assert main(["demo", "--host", "0.0.0.0"]) == 0
    assert seen["auth"] == ("bob", "secret")
    assert "unencrypted" in capsys.readouterr().err  # a password over the network is said to travel in clear


def test_a_failing_handler_is_a_message_in_the_page(capsys) -> None:
    pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]'")
    from glowtorch.demo.page import _guarded

    def broken(x):
        raise RuntimeError("a bug")

    def refusing(x):
        raise DemoError("bad input")

    *kept, message = _guarded(broken, 2)(1)
    assert len(kept) == 2 and "the server failed on this input (RuntimeError)" in message
    assert "RuntimeError: a bug" in capsys.readouterr().err  # the traceback goes to the server's log
    assert _guarded(refusing, 1)(1)[1] == "**bad input**"
    assert _guarded(lambda x: (x, x + 1), 2)(1) == (1, 2, "")


def test_only_uploads_in_the_servers_folder_are_removed(tmp_path) -> None:
    from glowtorch.demo.page import _discard_upload

    uploads, elsewhere = tmp_path / "uploads", tmp_path / "user"
    (uploads / "abc").mkdir(parents=True)
    elsewhere.mkdir()
    upload, mine = uploads / "abc" / "seven.png", elsewhere / "seven.png"
    upload.write_bytes(b"x")
    mine.write_bytes(b"y")
    link = uploads / "link.png"
    link.symlink_to(mine)
    _discard_upload(str(mine), uploads)  # outside the folder: kept
    _discard_upload(link, uploads)  # a link in it to a file outside: kept, and so is its target
    _discard_upload(str(uploads / ".." / "user" / "seven.png"), uploads)
    _discard_upload(str(upload), None)  # no private folder (build_app called directly): nothing removed
    assert mine.read_bytes() == b"y" and link.is_symlink() and upload.exists()
    _discard_upload(str(upload), uploads)
    assert not upload.exists() and not (uploads / "abc").exists() and uploads.is_dir()
