"""A model conditioned on a low-resolution image from the command line: train, evaluate beside a baseline,
sample per context, encode/decode/interpolate under a context, and the one-line errors for bad contexts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_distinct_cells, grid_cells, randomize
from glowtorch.checkpoint import load_model, save_model
from glowtorch.cli import main
from glowtorch.context import lowres_images
from glowtorch.data import load_dataset
from glowtorch.preprocess import to_uint8
from test_cli import one_line_error, run

TINY = ["--levels", "2", "--depth", "1", "--hidden-channels", "8", "--batch-size", "16", "--init-images", "32",
        "--eval-every", "3", "--no-progress", "--temperatures", "0,0.7", "--context-features", "4",
        "--precision", "float32"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A conditional (lowres:2, 8x8 digits -> 4x4 contexts) and an unconditional run, the same recipe."""
    root = tmp_path_factory.mktemp("cond")
    assert main(["train", "--dataset", "digits", "--steps", "6", "--out", str(root / "plain"), *TINY]) == 0
    argv = ["train", "--dataset", "digits", "--steps", "6", "--condition", "lowres:2", "--out", str(root / "sr"),
            "--baseline", str(root / "plain"), *TINY]  # fmt: skip
    assert main(argv) == 0
    digits = load_dataset("digits", train=False).images
    for i in range(3):
        Image.fromarray(digits[i, 0].numpy()).save(root / f"digit{i}.png")
        Image.fromarray(lowres_images(digits[i : i + 1], 2)[0, 0].numpy()).save(root / f"low{i}.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "rgb.png")
    return root


def test_training_reports_the_conditional_bpd_beside_the_baseline(runs, capsys) -> None:
    lines = [json.loads(line) for line in (runs / "sr" / "metrics.jsonl").read_text().splitlines()]
    plain = [json.loads(line) for line in (runs / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((runs / "sr" / "model" / "config.json").read_text())["condition"] == "lowres:2"
    assert [m["baseline_bpd"] for m in lines] == [plain[-1]["test_bpd"]] * 2  # the baseline's own evaluation
    code, text, err = run(capsys, "evaluate", runs / "sr", "--dataset", "digits", "--baseline", runs / "plain",
                          "--no-progress")  # fmt: skip
    assert code == 0, err
    assert f"{lines[-1]['test_bpd']:.4f} bits/dim given the lowres:2 context" in text
    assert f"baseline {runs / 'plain'}: {plain[-1]['test_bpd']:.4f} bits/dim" in text
    # the training's sample grid: two temperature rows of ten columns, the context of test image k in column k
    cells = grid_cells(runs / "sr" / "samples" / "step_00000006.png", rows=2, columns=10, side=8, scale=2)
    model = load_model(runs / "sr")
    modes = model.sample(10, 0.0, context=model.config.context_of(load_dataset("digits", train=False).images[:10]))
    assert cells[:10].tolist() == to_uint8(modes)[:, 0].tolist()
    assert_distinct_cells(cells[10:])


def test_sample_writes_a_row_per_context_led_by_the_context(runs, tmp_path, capsys) -> None:
    out = tmp_path / "s.png"
    code, text, err = run(capsys, "sample", runs / "sr", "--context", runs / "low0.png", runs / "low1.png",
                          "--n", "3", "--temperature", "0", "-o", out, "--precision", "float32")  # fmt: skip
    assert code == 0, err
    assert "2 row(s) of 3 samples" in text
    cells = grid_cells(out, rows=2, columns=4, side=8)
    for row, name in enumerate(["low0.png", "low1.png"]):
        low = np.asarray(Image.open(runs / name))
        assert (cells[4 * row] == np.kron(low, np.ones((2, 2), np.uint8))).all()  # the context, enlarged
        assert all((cells[4 * row + k] == cells[4 * row + 1]).all() for k in (2, 3))  # T = 0: the mode, thrice
    model = load_model(runs / "sr")
    context = model.config.context_of(load_dataset("digits", train=False).images[:1])
    assert (cells[1] == to_uint8(model.sample(1, 0.0, context=context))[0, 0].numpy()).all()


def test_encode_decode_and_interpolate_under_a_context(runs, tmp_path, capsys) -> None:
    digits = [runs / f"digit{i}.png" for i in range(2)]
    latents = tmp_path / "z.safetensors"
    model = randomize(load_model(runs / "sr"), scale=0.05)  # a context that visibly matters
    save_model(model, tmp_path / "sr")
    assert run(capsys, "encode", tmp_path / "sr", *digits, "-o", latents)[0] == 0
    assert run(capsys, "decode", latents, "-o", tmp_path / "back")[0] == 0
    for i in range(2):  # the stored contexts (each image's own) give the images back exactly
        assert (np.asarray(Image.open(tmp_path / "back" / f"digit{i}.png")) == np.asarray(Image.open(digits[i]))).all()
    assert run(capsys, "decode", latents, "--context", runs / "low2.png", "-o", tmp_path / "other")[0] == 0
    assert not (np.asarray(Image.open(tmp_path / "other" / "digit0.png")) == np.asarray(Image.open(digits[0]))).all()
    out = tmp_path / "i.png"
    assert run(capsys, "interpolate", tmp_path / "sr", *digits, "--steps", "3", "-o", out)[0] == 0
    cells = grid_cells(out, rows=1, columns=3, side=8)
    pictures = [np.asarray(Image.open(path)) for path in digits]
    assert (cells[0] == pictures[0]).all() and (cells[2] == pictures[1]).all()
    code, _, err = run(capsys, "interpolate", tmp_path / "sr", *digits, "--steps", "3", "--context",
                       runs / "low0.png", "-o", out)  # fmt: skip
    assert code == 0, err
    fixed = grid_cells(out, rows=1, columns=3, side=8)
    assert (fixed[0] == cells[0]).all() and (fixed[2] == cells[2]).all()  # encoded and decoded under one context
    assert not (fixed[1] == cells[1]).all()  # the way between them runs under digit 0's context


def test_lowres_writes_the_context_a_model_takes(runs, tmp_path, capsys) -> None:
    code, text, _ = run(capsys, "lowres", runs / "sr", runs / "digit1.png", "-o", tmp_path / "low")
    assert code == 0 and "4x4 pixels" in text
    assert (np.asarray(Image.open(tmp_path / "low" / "digit1.png")) == np.asarray(Image.open(runs / "low1.png"))).all()


def test_bad_contexts_give_one_line_errors(runs, tmp_path, capsys) -> None:
    png = tmp_path / "s.png"
    cases = [
        (["sample", runs / "sr", "-o", png], "sample needs --context FILE, a 4x4 greyscale image"),
        (["sample", runs / "sr", "--context", runs / "digit0.png", "-o", png], "--context: "),
        (["sample", runs / "sr", "--context", runs / "rgb.png", "-o", png], "colour image"),
        (["sample", runs / "sr", "--context", tmp_path / "missing.png", "-o", png], "not a readable image"),
        (["sample", runs / "plain", "--context", runs / "low0.png", "-o", png], "has no context"),
        (["encode", runs / "plain", runs / "digit0.png", "--context", runs / "low0.png"], "has no context"),
        (["temperatures", runs / "sr", "-o", png], "temperatures needs --context"),
        (["lowres", runs / "plain", runs / "digit0.png"], "--condition lowres:F"),
        (["evaluate", runs / "plain", "--dataset", "digits", "--baseline", runs / "plain"], "conditional model"),
        (["evaluate", runs / "sr", "--dataset", "digits", "--baseline", runs / "sr"], "must be an unconditional"),
        (["train", "--dataset", "digits", "--condition", "lowres:3", "--steps", "1", "--out", tmp_path / "r"],
         "not divisible by 3"),
        (["train", "--dataset", "digits", "--condition", "lowres:2", "--baseline", runs / "sr", "--steps", "1",
          "--out", tmp_path / "r"], "must be an unconditional"),
        (["train", "--dataset", "digits", "--condition", "tensor:2,1,1", "--steps", "1", "--out", tmp_path / "r"],
         "comes from your own code"),
    ]  # fmt: skip
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == 1, argv
        assert one_line_error(err) and message in err, err
    assert not png.exists() and not (tmp_path / "r").exists()


def test_superres_measures_a_model_and_draws_its_figure(runs, tmp_path, capsys) -> None:
    figure, report = tmp_path / "sr.png", tmp_path / "sr.json"
    code, text, err = run(capsys, "superres", runs / "sr", "--dataset", "digits", "--limit", "40", "--samples", "2",
                          "--baseline", runs / "plain", "--figure", figure, "--rows", "3", "--json", report,
                          "--no-progress")  # fmt: skip
    assert code == 0, err
    values = json.loads(report.read_text())
    assert values["images"] == 40 and set(values["fidelity_mae"]) == {"0", "0.6", "1"}
    assert set(values["diversity"]) == {"0.6", "1"} and values["baseline_bpd"] > 0
    assert f"{values['test_bpd']:.4f} bits/dim given the lowres:2 context" in text
    assert f"bicubic {values['psnr_bicubic']:.2f} dB" in text
    # per image: context, bicubic, 3 samples at 0.6, 3 at 1.0, the truth
    cells = grid_cells(figure, rows=3, columns=9, side=8, scale=2)
    truth = load_dataset("digits", train=False).images[:3, 0].numpy()
    assert (cells[8::9] == truth).all()
    assert (cells[0::9] == np.kron(lowres_images(torch.from_numpy(truth[:, None]), 2)[:, 0].numpy(),
                                   np.ones((2, 2), np.uint8))).all()  # fmt: skip
    code, _, err = run(capsys, "superres", runs / "plain", "--dataset", "digits")
    assert code == 1 and one_line_error(err) and "--condition lowres:F" in err
