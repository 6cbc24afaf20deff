"""precision="auto": the probe's decision (with fake timings, so no test depends on the machine), its
record with the run, resume keeping it, and exactness of the latent tools under bfloat16."""

from __future__ import annotations

import json

import pytest
import torch

import glowtorch.precision
from conftest import tiny_config
from glowtorch import load_model
from glowtorch.checkpoint import load_training_state
from glowtorch.cli import main
from glowtorch.data import load_dataset
from glowtorch.latent import decode_images, encode_images
from glowtorch.precision import (
    MIN_PAIRS,
    SPEEDUP_NEEDED,
    ProbeRates,
    choose,
    paired_speedups,
    probe_rates,
    resolve_precision,
)
from test_cli import TINY

# Without --precision float32 (TINY has none): these runs take "auto".
CONFIG = tiny_config(image_shape=(1, 8, 8))


def fake_rates(monkeypatch, float32: float, bfloat16: float) -> list:
    calls = []

    def rates(*args, **kwargs):
        calls.append(args)
        return ProbeRates(float32, bfloat16, bfloat16 / float32)  # noise-free: every pair the same ratio

    monkeypatch.setattr(glowtorch.precision, "probe_rates", rates)
    return calls


def test_choose_takes_bfloat16_only_when_clearly_faster() -> None:
    assert choose(533.0, 1045.0) == "bfloat16"
    assert choose(346.0, 187.0) == "float32"
    assert choose(100.0, 100.0 * SPEEDUP_NEEDED) == "bfloat16"
    assert choose(100.0, 100.0 * SPEEDUP_NEEDED - 1) == "float32"


def test_a_ratio_within_the_noise_keeps_float32() -> None:
    """Fake timings: bfloat16 is chosen only when it is clearly faster in most paired measurements."""
    steady_f32, steady_bf16 = [1.0e-3] * 20, [0.5e-3] * 20
    assert paired_speedups(steady_f32, steady_bf16) == pytest.approx(2.0)
    # a median ratio of 1.21 (the measurement in the log), pairs spread from 0.9 to 1.5: float32
    noisy = [0.9, 1.0, 1.05, 1.1, 1.15, 1.2, 1.21, 1.21, 1.25, 1.3, 1.35, 1.4, 1.5]
    low = paired_speedups([r * 1e-3 for r in noisy], [1e-3] * len(noisy))
    assert low < SPEEDUP_NEEDED and choose(100.0, 121.0, speedup_low=low) == "float32"
    # a clear 1.5x with a small spread: bfloat16
    clear = [1.45, 1.5, 1.52, 1.48, 1.55, 1.5, 1.47, 1.51]
    low = paired_speedups([r * 1e-3 for r in clear], [1e-3] * len(clear))
    assert low >= SPEEDUP_NEEDED and choose(100.0, 150.0, speedup_low=low) == "bfloat16"
    # too few pairs decide nothing; a good median with a bad lower quartile is not enough either
    assert paired_speedups([2e-3] * (MIN_PAIRS - 1), [1e-3] * (MIN_PAIRS - 1)) == 0.0
    assert choose(100.0, 200.0, speedup_low=1.1) == "float32"


def test_resolve_auto_from_the_probe_and_explicit_choices(monkeypatch) -> None:
    calls = fake_rates(monkeypatch, 533.0, 1045.0)
    choice = resolve_precision("auto", CONFIG, "cpu", 64)
    assert choice.precision == "bfloat16" and choice.bfloat16_gflops == 1045.0
    assert "bfloat16" in choice.summary() and "x1.96" in choice.summary()
    assert len(calls) == 1
    fake_rates(monkeypatch, 346.0, 187.0)
    assert resolve_precision("auto", CONFIG).precision == "float32"
    assert resolve_precision("bfloat16", CONFIG).precision == "bfloat16"  # explicit: no probe
    assert resolve_precision("auto", CONFIG, dtype=torch.float64).precision == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    calls = fake_rates(monkeypatch, 1.0, 100.0)
    assert resolve_precision("auto", CONFIG, "cuda").precision == "float32" and not calls
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("float16", CONFIG)


def test_the_probe_measures_both_dtypes_once_per_process(monkeypatch) -> None:
    monkeypatch.undo()  # the real probe
    shapes = [(2, 4, 8, 3, 8), (2, 8, 8, 1, 8)]
    rates = probe_rates(shapes, "cpu", seconds=0.01)
    assert all(r > 0 for r in rates)
    assert probe_rates(shapes, "cpu", seconds=0.01) is rates  # cached


def test_the_choice_is_printed_and_recorded_and_kept_on_resume(tmp_path, capsys, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    fake_rates(monkeypatch, 100.0, 250.0)
    assert main(["train", "--dataset", "digits", "--steps", "3", "--out", str(run_dir), *TINY]) == 0
    out = capsys.readouterr().out
    assert "precision bfloat16 (auto: coupling-network convolutions at 250 GFLOP/s in bfloat16, 100 in float32" in out
    recorded = json.loads((run_dir / "train_config.json").read_text())
    assert recorded["precision"] == "auto" and recorded["resolved"]["precision"] == "bfloat16"
    assert recorded["resolved"]["probe_float32_gflops"] == 100.0
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["precision"] == "bfloat16"
    assert load_training_state(run_dir)["precision"] == "bfloat16"
    calls = fake_rates(monkeypatch, 250.0, 100.0)  # the machine changed: auto would now pick float32
    assert main(["train", "--dataset", "digits", "--steps", "6", "--out", str(run_dir), "--resume", *TINY]) == 0
    assert "precision bfloat16 (auto, kept from the run's start)" in capsys.readouterr().out and not calls
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["precision"] == "bfloat16"
    flags = ["--steps", "9", "--out", str(run_dir), "--resume", "--precision", "float32"]
    assert main(["train", "--dataset", "digits", *flags, *TINY]) == 0  # told otherwise
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["precision"] == "float32"
    # a model trained in bfloat16 round-trips exactly: the latent tools run its networks in full precision
    model = load_model(run_dir).set_compute(precision="bfloat16")
    images = load_dataset("digits", train=False).images[:64]
    latents = encode_images(model, images)
    assert torch.equal(decode_images(model, latents), images)
    assert model.compute.precision == "bfloat16"  # and leave the setting as it was
    # bit for bit the float32 model's latents: the bfloat16 setting did not reach the networks
    full = load_model(run_dir)
    for z, z_full in zip(latents, encode_images(full, images), strict=True):
        assert torch.equal(z, z_full)


def test_sampling_commands_resolve_auto(tmp_path, capsys, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--steps", "3", "--out", str(run_dir), *TINY, "--precision",
                 "float32"]) == 0  # fmt: skip
    capsys.readouterr()
    fake_rates(monkeypatch, 100.0, 300.0)
    assert main(["sample", str(run_dir), "--n", "4", "-o", str(tmp_path / "s.png")]) == 0
    assert "precision bfloat16 (auto" in capsys.readouterr().out
    assert (
        main(["temperatures", str(run_dir), "--n", "2", "--precision", "float32", "-o", str(tmp_path / "t.png")]) == 0
    )
    assert "precision float32 (set explicitly)" in capsys.readouterr().out


def test_a_bfloat16_run_reports_its_float32_likelihood(tmp_path, capsys) -> None:
    """Training's test bits/dim of a run trained in bfloat16 is the model's float32 likelihood: the value
    glowtorch evaluate gives for the saved model (which evaluates in float32), not the bfloat16 one."""
    from glowtorch.evaluate import evaluate_bits_per_dim

    run_dir = tmp_path / "run"
    flags = ["--steps", "6", "--out", str(run_dir), "--precision", "bfloat16", "--conditional", *TINY]
    assert main(["train", "--dataset", "digits", *flags]) == 0
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["precision"] == "bfloat16"
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--dataset", "digits", "--no-progress"]) == 0
    assert f"{last['test_bpd']:.4f} bits/dim" in capsys.readouterr().out
    model, test = load_model(run_dir), load_dataset("digits", train=False)
    assert evaluate_bits_per_dim(model, test)["test_bpd"] == pytest.approx(last["test_bpd"], abs=1e-9)
    # bfloat16 networks do change the value: computing it so would have reported another number
    model.set_compute(precision="bfloat16")
    x, y = glowtorch.dequantize(test.images[:64], 8, noise=False), test.labels[:64]
    with torch.no_grad():
        in_bfloat16 = model.log_prob(x, y)
        with model.full_precision():
            in_float32 = model.log_prob(x, y)
    assert not torch.equal(in_bfloat16, in_float32) and model.compute.precision == "bfloat16"
