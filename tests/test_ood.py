"""glowtorch ood: the metrics against hand-computed values, the scores' definitions, the sets, bad input."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from conftest import randomize, tiny_config
from glowtorch import Glow, save_model
from glowtorch.cli import main
from glowtorch.data import load_dataset
from glowtorch.evaluate import score_images
from glowtorch.ood import aupr, auroc, fpr_at_tpr, load_ood_set, ood_report, png_bits_per_dim


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_auroc_of_known_separations() -> None:
    assert auroc(t(1, 2, 3), t(4, 5)) == 1.0  # every outlier above every inlier
    assert auroc(t(4, 5), t(1, 2, 3)) == 0.0  # the score points the wrong way
    assert auroc(t(0, 2), t(1, 3)) == 0.75  # 3 of the 4 (outlier, inlier) pairs in order
    assert auroc(t(1, 2), t(1, 2)) == 0.5  # ties count one half
    assert auroc(t(1, 1, 1), t(1)) == 0.5
    assert auroc(t(0, float("inf")), t(float("inf"), float("inf"))) == 0.75  # inf ties with inf


def test_aupr_is_average_precision_with_outliers_positive() -> None:
    # ranked 3 (out), 2 (in), 1 (out), 0 (in): precision 1/1 at the first outlier, 2/3 at the second
    assert aupr(t(0, 2), t(1, 3)) == pytest.approx((1 + 2 / 3) / 2)
    assert aupr(t(0, 1), t(2, 3)) == 1.0
    assert aupr(t(5, 5), t(5, 5)) == 0.5  # all tied: precision 2/4 at the one threshold


def test_fpr_at_95_percent_of_the_outliers_detected() -> None:
    outliers = torch.arange(1, 21, dtype=torch.float64)  # 20 outliers: flagging 19 needs threshold 2
    assert fpr_at_tpr(t(0, 1.5, 2, 5), outliers) == 0.5  # 2 (tied with the threshold) and 5 are flagged
    assert fpr_at_tpr(t(0, 0.5), outliers) == 0.0  # perfect separation
    assert fpr_at_tpr(t(30, 40), outliers) == 1.0  # every inlier above every outlier
    assert fpr_at_tpr(t(0, 1), t(1), tpr=1.0) == 0.5  # one outlier: its own score is the threshold
    assert fpr_at_tpr(t(1, 2, 3, 4), t(0, 10), tpr=0.5) == 0.0  # half the outliers: the top one, 10


def test_png_complexity_orders_images_by_how_much_they_compress() -> None:
    flat = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    noisy = torch.randint(0, 256, (1, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    bits = png_bits_per_dim(torch.cat([flat, noisy]))
    assert bits[0] < 1.0 and bits[1] > 7.0  # a flat image compresses to its headers; noise not at all


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize(Glow(tiny_config(image_shape=(1, 8, 8))), scale=0.05)
    return save_model(model, tmp_path_factory.mktemp("m") / "model")


def test_the_report_scores_are_their_definitions(model_dir) -> None:
    from glowtorch import load_model

    model = load_model(model_dir)
    test = load_ood_set("digits", model, 64)
    noise = load_ood_set("noise", model, 32)
    train = load_dataset("digits").images[:100]
    report = ood_report(model, test, [noise], train, background=model, batch_size=8)
    typical = score_images(model, train).bits_per_dim.mean().item()
    assert report.typical_bpd == pytest.approx(typical)
    bpd = score_images(model, noise[1]).bits_per_dim
    scores = report.scores["noise"]
    assert torch.allclose(scores["bpd"], bpd)
    assert torch.allclose(scores["typicality"], (bpd - typical).abs())
    assert torch.allclose(scores["complexity"], bpd - png_bits_per_dim(noise[1]))
    assert torch.allclose(scores["likelihood_ratio"], torch.zeros_like(bpd))  # its own background: ratio 1
    metrics = report.metrics["noise"]
    assert metrics["bpd"]["auroc"] == auroc(report.scores["digits"]["bpd"], bpd)
    batch = (bpd[:32].view(4, 8).mean(1) - typical).abs()
    test_batch = (report.scores["digits"]["bpd"].view(8, 8).mean(1) - typical).abs()
    assert metrics["typicality_batch8"]["auroc"] == auroc(test_batch, batch)


def test_the_sets(model_dir) -> None:
    from glowtorch import load_model

    model = load_model(model_dir)
    digits = load_dataset("digits", train=False).images
    assert torch.equal(load_ood_set("digits:invert", model, 10)[1], 255 - digits[:10])
    assert torch.equal(load_ood_set("digits:rot90", model, 10)[1], digits[:10].rot90(1, dims=(2, 3)))
    assert not load_ood_set("black", model, 5)[1].any()
    constant = load_ood_set("constant", model, 5)[1].flatten(1)
    assert (constant == constant[:, :1]).all() and constant[:, 0].unique().numel() > 1
    samples = load_ood_set("samples", model, 6)[1]
    assert samples.shape == (6, 1, 8, 8) and samples.dtype == torch.uint8


def test_the_command_writes_the_report(model_dir, tmp_path, capsys) -> None:
    report = tmp_path / "report"
    code = main(["ood", str(model_dir), "--in", "digits", "--out", "digits:invert", "--out", "noise", "--out",
                 "black", "-o", str(report), "--background", str(model_dir), "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "| digits:invert | bpd |" in out and "typicality_batch8" in out
    metrics = json.loads((report / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"digits:invert", "noise", "black"}
    assert set(metrics["noise"]) == {"bpd", "typicality", "complexity", "likelihood_ratio", "typicality_batch8"}
    rows = (report / "scores.csv").read_text().splitlines()
    assert (
        rows[0] == "set,index,bpd,typicality,complexity,likelihood_ratio" and len(rows) == 1 + 297 + 297 + 2000 + 2000
    )
    for score in ("bpd", "typicality", "complexity", "likelihood_ratio"):
        assert (report / f"hist_{score}.png").stat().st_size > 1000


def test_bad_sets_are_one_line(model_dir, tmp_path, capsys) -> None:
    def error(*argv: str) -> str:
        assert main(["ood", str(model_dir), "-o", str(tmp_path / "r"), "--no-progress", *argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("glowtorch: error: ")
        return err

    assert "two batches of 8" in error("--in", "digits", "--out", "noise", "--limit", "10")
    assert "unknown transform 'blur'" in error("--in", "digits", "--out", "digits:blur")
    assert "unknown dataset 'imagenet'" in error("--in", "imagenet", "--out", "noise")
    folder = tmp_path / "cifar-10-batches-py"  # a 3-channel set for a 1-channel model
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": np.zeros((20, 3072), dtype=np.uint8), b"labels": [0] * 20}, f)
    assert "cifar10 images have 3 channel(s), the model expects 1" in error("--in", "digits", "--out",
                                                                           f"cifar10={tmp_path}")  # fmt: skip
