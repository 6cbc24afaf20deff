"""Reliability: exact resume after SIGTERM and SIGKILL (real subprocesses), crash-safe checkpoints,
numerical-fault recovery, safe loading, and property-based invertibility checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from conftest import free_port, randomize
from glowtorch import GlowConfig
from glowtorch.checkpoint import checkpoint_paths, load_training_state
from glowtorch.data import load_dataset
from glowtorch.layers import ActNorm, AdditiveCoupling, AffineCoupling, InvertibleConv1x1, InvertibleConv1x1LU
from glowtorch.train import TrainConfig, Trainer

ARGS = ["train", "--dataset", "digits", "--levels", "2", "--depth", "2", "--hidden-channels", "16",
        "--batch-size", "16", "--init-images", "32", "--eval-every", "10", "--no-progress",
        "--temperatures", "0.7", "--keep-checkpoints", "3", "--precision", "float32"]  # fmt: skip


def glowtorch(*argv, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "glowtorch", *map(str, argv)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def weights(run: Path) -> bytes:
    return (run / "model" / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    process = glowtorch(*ARGS, "--steps", "60", "--out", out)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out


def test_sigkill_mid_run_then_resume_is_bitwise_identical(straight_run, tmp_path) -> None:
    out = tmp_path / "killed"
    process = glowtorch(*ARGS, "--steps", "60", "--out", out)
    wait_for(lambda: any(p.name >= "step_00000030.pt" for p in checkpoint_paths(out)))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    resumed = glowtorch(*ARGS, "--steps", "60", "--out", out, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert weights(out) == weights(straight_run)
    a = load_training_state(out)
    b = load_training_state(straight_run)
    for key in ("model", "ema"):
        for name, tensor in b[key].items():
            assert torch.equal(a[key][name], tensor), name
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40, 50, 60]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_and_exit_cleanly(straight_run, tmp_path, sig) -> None:
    out = tmp_path / "stopped"
    process = glowtorch(*ARGS, "--steps", "60", "--out", out)
    wait_for(lambda: any(p.name >= "step_00000010.pt" for p in checkpoint_paths(out)))
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    stopped_at = load_training_state(out)["step"]
    assert 10 <= stopped_at < 60
    resumed = glowtorch(*ARGS, "--steps", "60", "--out", out, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert weights(out) == weights(straight_run)


def test_corrupt_newest_checkpoint_falls_back(straight_run, tmp_path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(straight_run, out)
    newest = checkpoint_paths(out)[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    state = load_training_state(out)
    assert state["step"] == int(checkpoint_paths(out)[-2].stem.split("_")[1])
    for path in checkpoint_paths(out):
        path.write_bytes(b"garbage")
    from glowtorch import CheckpointError

    with pytest.raises(CheckpointError, match="no readable training state"):
        load_training_state(out)


# --------------------------------------------------------------------------- numerical faults
class PoisonedObjective(torch.nn.Module):
    """Returns a NaN loss on chosen steps of a trainer (and the real loss otherwise)."""

    def __init__(self, trainer: Trainer, bad) -> None:
        super().__init__()
        self.inner, self.trainer, self.bad = trainer.objective, trainer, bad

    def forward(self, x, y=None, context=None, noise=None):
        loss, bpd = self.inner(x, y, context, noise)
        if self.bad(self.trainer.step, self.trainer.lr_scale):
            return loss * float("nan"), bpd * float("nan")
        return loss, bpd


def make_trainer(tmp_path, bad, **overrides) -> Trainer:
    data = load_dataset("digits")
    model_config = GlowConfig(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=8)
    values = dict(batch_size=16, init_images=32, steps=30, eval_every=10, temperatures=(0.5,), max_bad_steps=3)
    values.update(overrides)
    trainer = Trainer(model_config, TrainConfig(**values), data, None, tmp_path / "run", log=lambda *a: None)
    trainer.objective = PoisonedObjective(trainer, bad)
    return trainer


def test_non_finite_steps_are_skipped_and_counted(tmp_path) -> None:
    trainer = make_trainer(tmp_path, lambda step, scale: step in (3, 4, 17))
    metrics = trainer.run(progress=False)
    assert metrics["bad_steps"] == 3 and metrics["rollbacks"] == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["bad_steps"] for m in lines] == [2, 3, 3]
    for name, tensor in load_training_state(tmp_path / "run")["model"].items():
        assert not tensor.is_floating_point() or torch.isfinite(tensor).all(), name


def test_repeated_faults_roll_back_with_lower_lr(tmp_path) -> None:
    # Steps 12..14 fail at full learning rate only: after the rollback to step 10 at half rate, they pass.
    trainer = make_trainer(tmp_path, lambda step, scale: 12 <= step <= 14 and scale == 1.0)
    metrics = trainer.run(progress=False)
    assert metrics["rollbacks"] == 1 and metrics["step"] == 30
    assert trainer.lr_scale == 0.5


def test_faults_that_recur_after_rollback_stop_with_a_message(tmp_path) -> None:
    trainer = make_trainer(tmp_path, lambda step, scale: step >= 12)
    with pytest.raises(FloatingPointError, match="after a rollback"):
        trainer.run(progress=False)
    assert load_training_state(tmp_path / "run")["step"] == 10


# --------------------------------------------------------------------------- properties
LAYER_KINDS = {
    "actnorm": lambda c: ActNorm(c),
    "invconv": lambda c: InvertibleConv1x1(c),
    "lu": lambda c: InvertibleConv1x1LU(c),
    "affine": lambda c: AffineCoupling(c, 4),
    "additive": lambda c: AdditiveCoupling(c, 4),
}


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(sorted(LAYER_KINDS)),
    channels=st.integers(2, 7),
    height=st.integers(1, 5),
    width=st.integers(1, 5),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.0, 0.5),
)
def test_property_invertible_with_consistent_logdet(kind, channels, height, width, batch, seed, scale) -> None:
    torch.manual_seed(seed)
    layer = randomize(LAYER_KINDS[kind](channels).double(), scale=scale, seed=seed)
    x = torch.randn(batch, channels, height, width, dtype=torch.float64)
    y, logdet = layer(x)
    x_back, inverse_logdet = layer.inverse(y)
    assert y.shape == x.shape and logdet.shape == (batch,)
    assert_close(x_back, x, atol=1e-9, rtol=1e-9)
    assert_close(logdet, -inverse_logdet, atol=1e-9, rtol=1e-9)
    if height * width * channels <= 24:
        jac = torch.autograd.functional.jacobian(lambda v: layer(v)[0], x[:1])
        dim = x[0].numel()
        assert_close(logdet[0], torch.linalg.slogdet(jac.reshape(dim, dim))[1], atol=1e-8, rtol=1e-8)


def test_non_finite_weights_are_never_saved(tmp_path) -> None:
    trainer = make_trainer(tmp_path, lambda step, scale: False)
    inner = trainer.objective

    class CorruptWeights(torch.nn.Module):
        def forward(self, x, y=None, context=None, noise=None):
            if trainer.step == 15 and trainer.lr_scale == 1.0:
                with torch.no_grad():
                    trainer.model.top_prior[0, 0, 0, 0] = float("inf")
            return inner(x, y, context, noise)

    trainer.objective = CorruptWeights()
    metrics = trainer.run(progress=False)
    assert metrics["step"] == 30 and metrics["rollbacks"] == 1
    for path in checkpoint_paths(tmp_path / "run"):
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_learning_rate_schedule() -> None:
    from glowtorch.train import learning_rate

    constant = TrainConfig(lr=1e-3, warmup_steps=10, steps=100)
    assert learning_rate(constant, 0) == pytest.approx(1e-4)
    assert learning_rate(constant, 9) == pytest.approx(1e-3)
    assert learning_rate(constant, 500) == pytest.approx(1e-3)
    cosine = TrainConfig(lr=1e-3, warmup_steps=10, decay_steps=110, steps=200)
    assert learning_rate(cosine, 9) == pytest.approx(1e-3)
    assert learning_rate(cosine, 60) == pytest.approx(0.5e-3)
    assert learning_rate(cosine, 110) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(cosine, 150) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(cosine, 60, scale=0.5) == pytest.approx(0.25e-3)
    for wrong in (5, "soon", 20.5):
        with pytest.raises(ValueError, match="decay_steps must be auto or a number of steps above warmup_steps"):
            TrainConfig(warmup_steps=10, decay_steps=wrong, steps=10)
    paced = TrainConfig(lr=1e-3, warmup_steps=20, decay_steps="auto", max_minutes=60)
    assert learning_rate(paced, 5000) == pytest.approx(1e-3)  # until the run fixes its pace at the end of warmup
    with pytest.raises(ValueError, match="set max_minutes"):
        TrainConfig(warmup_steps=20, decay_steps="auto", steps=10)
    with pytest.raises(ValueError, match="warmup_steps >= 20"):
        TrainConfig(warmup_steps=5, decay_steps="auto", max_minutes=1)


def test_paced_decay_steps() -> None:
    from glowtorch.train import paced_decay_steps

    # 5 steps/s for 10 minutes, no evaluation: 3,000 steps after step 500.
    assert paced_decay_steps(500, 5.0, 600.0, 0, 0, 32) == 3500
    # Evaluating 9,600 test images every 1,000 steps of 32 images costs a tenth more: 1/1.1 of the steps.
    assert paced_decay_steps(500, 5.0, 600.0, 1000, 9600, 32) == 500 + int(3000 / 1.1)
    assert paced_decay_steps(500, 5.0, 0.0, 1000, 9600, 32) == 501  # out of time: the decay ends at once


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of 256 KiB (tmpfs), unmounted afterwards; skipped where this process cannot mount."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'mount failed'})")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=False)  # lazy: a writer that failed may hold a file


def test_a_real_full_disk_is_one_line_and_loses_nothing(small_disk, capsys) -> None:
    """On a 256 KiB tmpfs the second checkpoint does not fit: torch.save fails inside its zip writer (its
    message does not say why); the command says the disk is full in one line, and what was written before
    (the first checkpoint, the model, the metrics) still loads."""
    from glowtorch import load_model
    from glowtorch.cli import main

    run_dir = small_disk / "run"
    flags = ["--dataset", "digits", "--levels", "2", "--depth", "1", "--hidden-channels", "8", "--batch-size", "16",
             "--steps", "30", "--eval-every", "3", "--keep-checkpoints", "5", "--precision", "float32",
             "--no-progress"]  # fmt: skip
    assert main(["train", *flags, "--out", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "the disk is full; nothing written before was lost: --resume continues from step" in err
    assert load_training_state(run_dir)["step"] in (3, 6)
    assert load_model(run_dir).config.image_shape == (1, 8, 8)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]  # no half line
    assert lines and all("step" in line for line in lines)
    # Other writers on the full disk: a sample grid (PNG) and a prepared store, each one line, nothing left.
    while True:
        try:
            with open(small_disk / "filler", "ab") as f:
                f.write(b"\0" * 4096)
        except OSError:
            break
    assert main(["sample", "pretrained:mnist", "--n", "16", "-o", str(small_disk / "grid.png")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"glowtorch: error: cannot write {small_disk / 'grid.png'}: the disk is full"
    assert main(["prepare", "--dataset", "digits", "--out", str(small_disk / "store")]) == 1
    err = capsys.readouterr().err
    assert "the disk is full" in err and err.count("\n") == 1
    assert not (small_disk / "grid.png").exists() and not list(small_disk.glob("store*"))


@pytest.mark.parametrize("launcher", ["plain", "torchrun"])
def test_the_surviving_process_says_in_one_line_that_another_died(tmp_path, launcher: str) -> None:
    """Two processes (gloo); SIGKILL one while they train: the other exits non-zero within seconds with one
    line, under torchrun and without it."""
    out = tmp_path / "run"
    port = str(free_port())
    train = [*ARGS, "--steps", "100000", "--eval-every", "50", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOWTORCH_DIST_TIMEOUT": "60"}
    if launcher == "plain":
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2")
        processes = [subprocess.Popen([sys.executable, "-m", "glowtorch", *train], env={**env, "RANK": str(rank),
                     "LOCAL_RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for rank in (0, 1)]  # fmt: skip
        survivor, victim = processes[0], processes[1].pid
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
                   "-m", "glowtorch", *train]  # fmt: skip
        survivor = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        victim = None
    wait_for(lambda: (out / "metrics.jsonl").exists() or survivor.poll() is not None, timeout=120)
    assert survivor.poll() is None, survivor.communicate()[1][-2000:]  # both are training
    if victim is None:  # torchrun's second worker: the child whose environment says RANK=1
        children = subprocess.run(["pgrep", "-P", str(survivor.pid)], capture_output=True, text=True).stdout.split()
        victim = next(int(c) for c in children if "RANK=1\0" in Path(f"/proc/{c}/environ").read_text())
    os.kill(victim, signal.SIGKILL)
    _, err = survivor.communicate(timeout=90)
    assert survivor.returncode != 0
    if launcher == "plain":  # torchrun adds its own report of the failed worker after ours
        assert "Traceback" not in err, err[-2000:]
        assert err.strip().splitlines()[-1].startswith("glowtorch: error: another process of the job failed")
    else:
        assert "glowtorch: error: another process of the job failed" in err, err[-2000:]
        own = [line for line in err.splitlines() if "Traceback" in line and "torchrun" not in line]
        assert not any("glowtorch/train" in line for line in err.splitlines()), err[-2000:]
        assert len(own) <= err.count("torch.distributed.elastic")  # only torchrun's own tracebacks, if any
