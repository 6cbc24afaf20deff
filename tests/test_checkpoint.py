"""Saving and loading: identical log_prob, no ActNorm re-initialization, bad files refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from conftest import images, randomize, tiny_config
from glowtorch import CheckpointError, Glow, GlowConfig, load_model, save_model


def trained_like_model(**overrides) -> Glow:
    torch.manual_seed(0)
    model = Glow(tiny_config(**overrides))
    model.initialize(images(16, model.config.image_shape, dtype=torch.float32))
    return randomize(model, scale=0.05)


@pytest.mark.parametrize("permutation", ["lu", "invconv", "shuffle", "reverse"])
def test_save_load_identical_log_prob(tmp_path, permutation: str) -> None:
    model = trained_like_model(permutation=permutation, num_classes=2)
    path = save_model(model, tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.is_initialized
    x = images(4, dtype=torch.float32, seed=1)
    y = torch.tensor([0, 1, 0, 1])
    assert_close(loaded.log_prob(x, y), model.log_prob(x, y), atol=0, rtol=0)


def test_loading_does_not_reinitialize_actnorm(tmp_path) -> None:
    model = trained_like_model()
    with torch.no_grad():
        model.actnorms()[0].bias.fill_(0.123)
    loaded = load_model(save_model(model, tmp_path))
    assert_close(loaded.actnorms()[0].bias, torch.full_like(loaded.actnorms()[0].bias, 0.123))
    x = images(4, dtype=torch.float32, seed=2)
    before = loaded.log_prob(x)
    loaded.log_prob(images(8, dtype=torch.float32, seed=3) * 0.5)  # other data: no re-init
    assert_close(loaded.log_prob(x), before, atol=0, rtol=0)


def test_uninitialized_state_is_saved(tmp_path) -> None:
    loaded = load_model(save_model(Glow(tiny_config()), tmp_path))
    assert not loaded.is_initialized


def test_corrupt_and_mismatched_checkpoints_are_refused(tmp_path) -> None:
    path = save_model(trained_like_model(), tmp_path / "a")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(path)
    other = save_model(trained_like_model(hidden_channels=4), tmp_path / "b")
    config = json.loads((other / "config.json").read_text())
    config["hidden_channels"] = 8
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(other)
    (other / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid"):
        load_model(other)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing")


def test_non_finite_weights_are_not_saved(tmp_path) -> None:
    model = trained_like_model()
    with torch.no_grad():
        model.top_prior[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_model(model, tmp_path / "c")
    assert not (tmp_path / "c" / "model.safetensors").exists()


LEGACY_RUN = Path(__file__).parent / "fixtures" / "legacy_run"


def test_a_checkpoint_written_by_glowtorch_0_1_0_still_loads_and_resumes(tmp_path, capsys) -> None:
    """tests/fixtures/legacy_run was written by glowtorch 0.1.0, whose config.json also held the compute
    settings (memory, precision, channels_last, fold_actnorm): they are ignored, and the model computes
    what it computed then (log_prob and fingerprint recorded by that version)."""
    from glowtorch.cli import main
    from glowtorch.latent import load_latents, model_fingerprint

    saved = json.loads((LEGACY_RUN / "model" / "config.json").read_text())
    assert {"memory", "precision", "channels_last", "fold_actnorm"} <= set(saved)
    model = load_model(LEGACY_RUN).eval()
    assert model.config == GlowConfig(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=8)
    expected, metadata = load_latents(LEGACY_RUN / "expected.safetensors")
    with torch.no_grad():
        assert_close(model.log_prob(expected["x"]), expected["log_prob"], rtol=1e-5, atol=1e-4)
    assert model_fingerprint(model) == metadata["model_fingerprint"]  # its latent files still match it
    run = tmp_path / "run"
    shutil.copytree(LEGACY_RUN, run)
    flags = ["--dataset", "digits", "--levels", "2", "--depth", "1", "--hidden-channels", "8",
             "--batch-size", "16", "--init-images", "64", "--eval-every", "2", "--no-compile", "--no-progress",
             "--out", str(run)]  # fmt: skip
    assert main(["train", *flags, "--steps", "4", "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
    assert set(json.loads((run / "model" / "config.json").read_text())) == set(model.config.to_dict())
