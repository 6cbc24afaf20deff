"""The CUDA path: exactness on the device, training steps against the CPU, compile, checkpoints across
devices, torchrun with nccl, the precision probe.

Every test runs on ``GLOWTORCH_TEST_DEVICE`` (default ``cuda``) and is skipped when that device is absent,
so the ordinary suite skips them; ``benchmarks/gpu_check.py`` runs them on a GPU, and its ``--dry-run``
runs them on the CPU (``GLOWTORCH_TEST_DEVICE=cpu``) so that they cannot rot between GPU loans.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close

from conftest import images, random_model
from glowtorch import GlowConfig, load_model
from glowtorch.data import load_dataset
from glowtorch.distributed import Distributed
from glowtorch.train import TrainConfig, Trainer
from test_layers import LAYERS, jacobian_logdet, make

DEVICE = os.environ.get("GLOWTORCH_TEST_DEVICE", "cuda")
GPU = DEVICE.startswith("cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        GPU and not torch.cuda.is_available(), reason="no CUDA device (GLOWTORCH_TEST_DEVICE=cpu runs these on the CPU)"
    ),  # fmt: skip
]
SMALL = dict(image_shape=(1, 8, 8), levels=2, depth=2, hidden_channels=16)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_is_exact_on_the_device_in_float64(name: str) -> None:
    layer = make(name, 4).to(DEVICE)
    x = torch.randn(2, 4, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    y, logdet = layer(x)
    x_back, inverse_logdet = layer.inverse(y)
    assert_close(x_back, x, atol=1e-10, rtol=0)
    assert_close(logdet + inverse_logdet, torch.zeros_like(logdet), atol=1e-10, rtol=0)
    assert_close(logdet, jacobian_logdet(layer, x), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("overrides", [dict(), dict(num_classes=3, coupling="additive", permutation="invconv")])
def test_the_model_on_the_device_equals_the_cpu_in_float64(overrides: dict) -> None:
    cpu = random_model(scale=0.1, **overrides)
    device = random_model(scale=0.1, **overrides).to(DEVICE)
    x = images(4)
    y = torch.tensor([0, 1, 2, 0]) if cpu.config.num_classes else None
    zs, _ = device.encode(x.to(DEVICE), None if y is None else y.to(DEVICE))
    assert_close(device.decode(zs, None if y is None else y.to(DEVICE)).cpu(), x, atol=1e-10, rtol=0)
    assert_close(device.log_prob(x.to(DEVICE), None if y is None else y.to(DEVICE)).cpu(), cpu.log_prob(x, y),
                 atol=1e-9, rtol=1e-12)  # fmt: skip


def _trained(run_dir, device: str, precision: str, steps: int = 3, resume: bool = False) -> Trainer:
    config = TrainConfig(batch_size=16, init_images=32, steps=steps, eval_every=3, precision=precision,
                         temperatures=(0.7,), samples_per_row=4, eval_batch_size=100)  # fmt: skip
    data = load_dataset("digits")
    trainer = Trainer(GlowConfig(**SMALL), config, data, None, run_dir, dist=Distributed(device=device),
                      log=lambda *a: None)  # fmt: skip
    trainer.run(resume=resume, progress=False)
    return trainer


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_training_steps_on_the_device_follow_the_cpu(tmp_path, precision: str) -> None:
    on_device = _trained(tmp_path / "device", DEVICE, precision)
    on_cpu = _trained(tmp_path / "cpu", "cpu", precision)
    tolerance = 1e-3 if precision == "float32" else 5e-2  # bfloat16 kernels round differently on each device
    for (name, a), b in zip(on_device.model.state_dict().items(), on_cpu.model.state_dict().values(), strict=True):
        assert_close(a.cpu().float(), b.float(), atol=tolerance, rtol=tolerance, msg=name)
    last = [json.loads(p.read_text().splitlines()[-1]) for p in (tmp_path / "device" / "metrics.jsonl",
                                                               tmp_path / "cpu" / "metrics.jsonl")]  # fmt: skip
    assert last[0]["precision"] == last[1]["precision"] == precision
    assert abs(last[0]["train_bpd"] - last[1]["train_bpd"]) < 0.05


def test_a_checkpoint_moves_between_the_device_and_the_cpu(tmp_path) -> None:
    """3 steps on the device, resumed to 6 on the CPU and to 9 on the device again: the weights of one
    9-step run, up to the devices' float32 rounding."""
    run_dir = tmp_path / "moved"
    _trained(run_dir, DEVICE, "float32", steps=3)
    _trained(run_dir, "cpu", "float32", steps=6, resume=True)
    moved = _trained(run_dir, DEVICE, "float32", steps=9, resume=True)
    straight = _trained(tmp_path / "straight", "cpu", "float32", steps=9)
    assert moved.step == 9
    for (name, a), b in zip(moved.model.state_dict().items(), straight.model.state_dict().values(), strict=True):
        assert_close(a.cpu(), b, atol=1e-3, rtol=1e-3, msg=name)
    assert load_model(run_dir, device=DEVICE).top_prior.device.type == torch.device(DEVICE).type


def test_compiled_decoding_matches_eager_on_the_device() -> None:
    model = random_model(scale=0.05).float().to(DEVICE)
    eager = model.sample(4, 0.7, generator=torch.Generator(device=DEVICE).manual_seed(0))
    model.compile_decode()
    compiled = model.sample(4, 0.7, generator=torch.Generator(device=DEVICE).manual_seed(0))
    assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_the_precision_probe_runs_on_the_device() -> None:
    from glowtorch.precision import ProbeRates, probe_rates, resolve_precision

    rates = probe_rates([(4, 2, 16, 3, 4), (4, 16, 16, 1, 4)], DEVICE, seconds=0.05)
    assert isinstance(rates, ProbeRates) and rates.float32_gflops > 0 and rates.bfloat16_gflops > 0
    choice = resolve_precision("auto", GlowConfig(**SMALL), DEVICE, 16)
    assert choice.precision in ("float32", "bfloat16")


def test_torchrun_with_one_process_per_device(tmp_path) -> None:
    """``torchrun --nproc_per_node 1``: nccl on a GPU (gloo on the CPU), the job's one line per evaluation."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               "-m", "glowtorch", "train", "--dataset", "digits", "--steps", "3", "--eval-every", "3",
               "--levels", "2", "--depth", "1", "--hidden-channels", "8", "--batch-size", "16",
               "--precision", "float32", "--device", "cuda" if GPU else "cpu", "--no-progress",
               "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    assert load_model(out).config.image_shape == (1, 8, 8)
