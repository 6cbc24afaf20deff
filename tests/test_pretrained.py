"""The models shipped inside the package: loading by name, their cards, and by-name use in the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import glowtorch
from conftest import randomize
from glowtorch.checkpoint import CheckpointError, resolve_checkpoint, save_model
from glowtorch.cli import main
from glowtorch.layers import ActNorm
from glowtorch.preprocess import dequantize
from glowtorch.pretrained import pretrained_card, pretrained_dir, pretrained_names

SHIPPED = {"mnist": 0, "mnist-conditional": 10}  # name -> number of classes


def handwritten_digits() -> torch.Tensor:
    """``(4, 1, 28, 28)`` uint8 MNIST-like digits drawn here: white strokes on black, centred in 20x20."""
    strokes = [
        [(10, 6), (18, 6), (18, 22), (10, 22), (10, 6)],  # a 0
        [(14, 5), (14, 23)],  # a 1
        [(9, 7), (19, 7), (11, 22)],  # a 7
        [(9, 7), (19, 7), (19, 14), (9, 14), (19, 14), (19, 22), (9, 22)],  # a 3
    ]
    images = []
    for points in strokes:
        canvas = Image.new("L", (28, 28), 0)
        ImageDraw.Draw(canvas).line(points, fill=255, width=2)
        images.append(torch.from_numpy(np.asarray(canvas).copy()))
    return torch.stack(images).unsqueeze(1)


def test_the_shipped_models_are_listed() -> None:
    assert set(SHIPPED) <= set(pretrained_names())
    assert set(glowtorch.pretrained_names()) == {*SHIPPED, "mnist-sr4"}  # nothing else rides along in the package


@pytest.mark.parametrize("name", sorted(pretrained_names()))
def test_the_readme_table_gives_each_card_s_figures(name: str) -> None:
    """The README's table of shipped models shows what each card measured (a re-shipped model whose row
    was not updated fails here)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith(f"| `pretrained:{name}` |")]
    assert len(rows) == 1
    card = pretrained_card(name)
    cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", rows[0].strip("|"))]  # "\|" is a | in a cell
    assert cells[1].startswith(f"**{card['test_bpd']:.4f}**")
    if "test_bpd_importance_weighted" in card and card["architecture"].get("dequantization") == "variational":
        assert f"importance-weighted {card['test_bpd_importance_weighted']:.4f}" in cells[1]
    assert cells[2] == f"{card['test_bpd_median']:.3f} / {card['test_bpd_worst']:.2f}"
    if "test_accuracy" in card:
        assert cells[3].startswith(f"{card['test_accuracy_likelihood']:.3f} (highest p(x \\| y))")
        assert cells[3].endswith(f"{card['test_accuracy']:.3f} (latent classifier)")
    assert cells[4] == f"{card['parameters']:,}"
    assert f"{card['steps']:,} steps" in cells[5] and f"{card['cpu_hours']:.2f} CPU-hours" in cells[5]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_shipped_model_loads_in_eval_mode_with_finite_weights(name: str) -> None:
    model = glowtorch.load_pretrained(name)
    assert not model.training
    assert model.config.image_shape == (1, 28, 28) and model.config.n_bits == 8
    assert model.config.num_classes == SHIPPED[name]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # loaded, not re-initialized: every ActNorm keeps its trained (non-identity) scale
    actnorms = [m for m in model.modules() if isinstance(m, ActNorm)]
    assert actnorms and all(bool(m.initialized) for m in actnorms)
    assert any(m.log_scale.abs().max() > 0.01 for m in actnorms)
    files = pretrained_dir(name)
    assert (files / "model.safetensors").stat().st_size < 20 * 2**20


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_give_finite_likelihoods_to_drawn_digits(name: str) -> None:
    model = glowtorch.load_pretrained(name)
    digits = handwritten_digits()
    x = dequantize(digits, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 7, 3]) if SHIPPED[name] else None
    with torch.no_grad():
        log_p = model.log_prob(x, y)
    bpd = glowtorch.nll_bits_per_dim(log_p, model.config.num_dims, 8)
    assert torch.isfinite(log_p).all() and (bpd > 0).all()
    # a digit is far more likely than noise of the same range
    noise = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)) - 0.5
    with torch.no_grad():
        assert (log_p > model.log_prob(noise, y)).all()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_card_records_what_was_measured(name: str) -> None:
    card = pretrained_card(name)
    model = glowtorch.load_pretrained(name)
    assert card["name"] == name
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    assert glowtorch.GlowConfig.from_dict(card["architecture"]) == model.config
    assert 0 < card["test_bpd_median"] <= card["test_bpd_worst"] and math.isfinite(card["test_bpd"])
    assert card["draws"] == 4 and card["cpu_hours"] > 0 and card["command"].startswith("glowtorch train")
    if card["architecture"].get("dequantization") == "variational":  # K-sample bound, beside the one-sample mean
        assert card["test_bpd_importance_weighted"] <= card["test_bpd"]
    assert ("test_accuracy" in card) == bool(SHIPPED[name])


def test_unknown_names_list_the_shipped_ones() -> None:
    with pytest.raises(ValueError, match="mnist-conditional") as error:
        glowtorch.load_pretrained("cifar")
    assert "mnist" in str(error.value)
    with pytest.raises(CheckpointError, match="unknown pretrained model 'nope'"):
        resolve_checkpoint("pretrained:nope")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_lists_the_shipped_models(capsys) -> None:
    code, out, _ = run(capsys, "pretrained")
    assert code == 0
    for name in SHIPPED:
        card = pretrained_card(name)
        line = next(line for line in out.splitlines() if line.startswith(f"pretrained:{name} "))
        assert f"{card['test_bpd']:.4f} bits/dim" in line and card["command"] in line


def test_cli_takes_a_shipped_model_by_name_and_a_same_named_folder_stays_a_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, _ = run(capsys, "sample", "pretrained:mnist", "--n", "4", "-o", "shipped.png")
    assert code == 0 and Image.open("shipped.png").size[0] > 28
    # a local folder called "mnist" holding another model: the bare name is that folder
    other = randomize(glowtorch.Glow(glowtorch.GlowConfig(image_shape=(1, 8, 8), levels=1, depth=1, hidden_channels=4)))
    save_model(other, tmp_path / "mnist")
    code, _, _ = run(capsys, "sample", "mnist", "--n", "4", "-o", "local.png", "--precision", "float32")
    assert code == 0
    assert Image.open("local.png").size != Image.open("shipped.png").size
    code, _, err = run(capsys, "sample", "pretrained:nope", "-o", "x.png")
    assert code == 1 and "unknown pretrained model 'nope'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_latents_of_a_shipped_model_decode_without_naming_it(tmp_path, capsys) -> None:
    paths = []
    for i, digit in enumerate(handwritten_digits()[:2]):
        paths.append(tmp_path / f"d{i}.png")
        Image.fromarray(digit[0].numpy(), "L").save(paths[-1])
    latents = tmp_path / "z.safetensors"
    assert run(capsys, "encode", "pretrained:mnist", *paths, "-o", latents)[0] == 0
    from safetensors import safe_open

    with safe_open(str(latents), "pt") as f:
        assert f.metadata()["checkpoint"] == "pretrained:mnist"
    assert run(capsys, "decode", latents, "-o", tmp_path / "back")[0] == 0
    for i, path in enumerate(paths):
        assert (np.asarray(Image.open(tmp_path / "back" / f"d{i}.png")) == np.asarray(Image.open(path))).all()


def test_card_json_matches_the_docs_page() -> None:
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    for name in SHIPPED:
        card = json.loads((pretrained_dir(name) / "card.json").read_text())
        page = (docs / f"model-{name}.md").read_text()
        assert f"{card['test_bpd']:.4f}" in page and card["command"] in page


def test_same_handwriting_another_digit_from_the_command_line(tmp_path, capsys) -> None:
    seven = tmp_path / "seven.png"
    Image.fromarray(handwritten_digits()[2, 0].numpy(), "L").save(seven)
    latents = tmp_path / "z.safetensors"
    assert run(capsys, "encode", "pretrained:mnist-conditional", seven, "--label", "7", "-o", latents)[0] == 0
    assert run(capsys, "decode", latents, "--label", "7", "-o", tmp_path / "as7")[0] == 0
    assert run(capsys, "decode", latents, "--label", "1", "-o", tmp_path / "as1")[0] == 0
    original = np.asarray(Image.open(seven))
    assert (np.asarray(Image.open(tmp_path / "as7" / "seven.png")) == original).all()
    assert (np.asarray(Image.open(tmp_path / "as1" / "seven.png")) != original).any()
    code, _, err = run(capsys, "decode", latents, "--label", "12", "-o", tmp_path / "bad")
    assert code == 1 and "--label: pick a class from 0 to 9" in err
    plain = tmp_path / "plain.safetensors"
    assert run(capsys, "encode", "pretrained:mnist", seven, "-o", plain)[0] == 0
    code, _, err = run(capsys, "decode", plain, "--label", "1", "-o", tmp_path / "bad")
    assert code == 1 and "holds no classes" in err


# Per-image bits/dim (4 draws, seed 1234) of handwritten_digits() under the shipped weights, measured once:
# the weights are fixed, so a damaged or differently loaded model moves them.
GOLDEN_DIGITS = {"mnist": [0.7663, 0.2434, 0.7450, 0.9143], "mnist-conditional": [0.7914, 0.2316, 0.7758, 0.9843]}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_score_fixed_digits_as_measured(name: str) -> None:
    from glowtorch.evaluate import score_images

    model = glowtorch.load_pretrained(name)
    labels = torch.tensor([0, 1, 7, 3]) if model.config.num_classes else None
    scores = score_images(model, handwritten_digits(), labels, draws=4).bits_per_dim
    assert scores.tolist() == pytest.approx(GOLDEN_DIGITS[name], abs=2e-4)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_card_figure_recomputed_on_the_shipped_test_images(name: str) -> None:
    """The card's test bits/dim is the mean of the shipped per-image test scores, and 32 of those scores
    (the shipped example test images) are recomputed here from the weights with the same noise."""
    from glowtorch.data import step_generator
    from glowtorch.evaluate import NOISE_BLOCK
    from glowtorch.likelihood import nll_bits_per_dim
    from glowtorch.reference import read_test_scores

    card = pretrained_card(name)
    scores, examples = read_test_scores(pretrained_dir(name) / "test_scores.safetensors")
    assert len(scores) == 10000 and scores.double().mean().item() == pytest.approx(card["test_bpd"], abs=1e-6)
    # The examples are test images order[:32] of a seed-0 permutation; image i's noise of draw d is row
    # i % 500 of its block's draw (evaluate.score_images, seed 1234).
    indices = torch.randperm(len(scores), generator=torch.Generator().manual_seed(0))[: len(examples)]
    model = glowtorch.load_pretrained(name)
    total = torch.zeros(len(examples), max(1, model.config.num_classes), dtype=torch.float64)
    for draw in range(card["draws"]):
        noise = []
        for i in indices.tolist():
            first = i - i % NOISE_BLOCK
            block_generator = step_generator(1234, first, stream=100 + draw)
            noise.append(torch.rand((NOISE_BLOCK, 1, 28, 28), generator=block_generator)[i - first])
        noise = torch.stack(noise)
        with torch.no_grad():  # variational dequantization moves x by q(u | x) from the same draws: log q joins in
            x, log_q = model.dequantized(dequantize(examples, 8, noise=noise), noise)
            y = torch.zeros(len(x), dtype=torch.long) if model.config.num_classes else None
            zs, logdet, log_prior = model(x, y)
            log_p = (log_prior + logdet - log_q)[:, None]
            if y is not None:  # under every class (the examples carry no labels): only the top prior changes
                by_class = model.class_log_likelihoods(zs[-1])
                log_p = log_p + by_class - by_class[:, :1]
            total += nll_bits_per_dim(log_p, 784, 8).double()
    recomputed = total / card["draws"]
    error = (recomputed - scores[indices].double()[:, None]).abs().min(1).values  # its own class: the closest
    assert error.max() < 1e-4


# --------------------------------------------------------------------------- pretrained:mnist-sr4


def test_the_super_resolution_model_loads_trained_and_records_its_measurements() -> None:
    model = glowtorch.load_pretrained("mnist-sr4")
    assert model.config.condition == "lowres:4" and model.config.context_shape == (1, 7, 7)
    actnorms = [m for m in model.modules() if isinstance(m, ActNorm)]
    assert all(bool(m.initialized) for m in actnorms) and any(m.log_scale.abs().max() > 0.01 for m in actnorms)
    card = pretrained_card("mnist-sr4")
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    assert glowtorch.GlowConfig.from_dict(card["architecture"]) == model.config
    sr = card["superres"]
    assert sr["images"] == 10000 and sr["test_bpd"] == card["test_bpd"] and sr["draws"] == card["draws"] == 4
    # the baseline is pretrained:mnist scored by the same function with the same noise as its own card (on
    # another CPU, which rounds differently in the last float32 digits)
    assert sr["baseline_bpd"] == pytest.approx(pretrained_card("mnist")["test_bpd"], abs=1e-5)
    # a conditional model of the same data, trained well, is below the unconditional one:
    # log p(x) = log p(c) + log p(x | c), and log p(c) <= 0
    assert sr["test_bpd"] < sr["baseline_bpd"]
    if "twin" in sr:  # the context helps, at the same flow and steps
        assert sr["test_bpd"] < sr["twin"]["test_bpd"]
    assert set(sr["fidelity_mae"]) == {"0", "0.6", "1"} and set(sr["diversity"]) == {"0.6", "1"}
    assert sr["command"].startswith("glowtorch superres pretrained:mnist-sr4")
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "model-mnist-sr4.md").read_text()
    assert f"{card['test_bpd']:.4f}" in page and sr["command"] in page and f"{sr['psnr_mode']:.2f} dB" in page


def test_the_super_resolution_model_samples_digits_that_keep_their_7x7_version(tmp_path, capsys) -> None:
    from glowtorch.context import lowres_images
    from glowtorch.preprocess import to_uint8

    model = glowtorch.load_pretrained("mnist-sr4")
    digits = handwritten_digits()
    lowres = lowres_images(digits, 4)
    with torch.no_grad():
        modes = to_uint8(model.sample(4, 0.0, context=model.config.context_of(digits)).clamp(-0.5, 0.5))
    # the modes' own 7x7 versions are close to the contexts they were drawn for (grey levels of 0..255)
    fidelity = (lowres_images(modes, 4).double() - lowres.double()).abs().mean().item()
    assert fidelity < 2 * pretrained_card("mnist-sr4")["superres"]["fidelity_mae"]["0"] + 5
    Image.fromarray(lowres[2, 0].numpy(), "L").save(tmp_path / "seven.png")
    code, _, err = run(capsys, "sample", "pretrained:mnist-sr4", "--context", tmp_path / "seven.png", "--n", "4",
                       "-o", tmp_path / "row.png", "--precision", "float32")  # fmt: skip
    assert code == 0, err
    assert Image.open(tmp_path / "row.png").size == (5 * 30 + 2, 32)  # the context and 4 samples, padding 2


def test_the_super_resolution_model_scores_fixed_digits_as_measured() -> None:
    """Per-image bits/dim of handwritten_digits() given their own 7x7 versions (4 draws, seed 1234), measured
    once: a damaged model, or contexts made another way, move them."""
    from glowtorch.evaluate import score_images

    scores = score_images(glowtorch.load_pretrained("mnist-sr4"), handwritten_digits(), draws=4).bits_per_dim
    assert scores.tolist() == pytest.approx([0.8051, 0.2497, 0.8033, 0.9880], abs=2e-4)
