"""Two processes with gloo on CPU: same init, same parameters and same test bits/dim as one process
with the same global batch and data order; resume with another process count; bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.testing import assert_close

from conftest import free_port
from glowtorch import Glow, GlowConfig, load_model
from glowtorch.data import load_dataset
from glowtorch.distributed import Distributed, init_distributed, shutdown
from glowtorch.evaluate import evaluate_bits_per_dim
from glowtorch.train import TrainConfig, Trainer

MODEL = GlowConfig(image_shape=(1, 8, 8), levels=2, depth=2, hidden_channels=8)
TRAIN = TrainConfig(
    batch_size=16, init_images=32, steps=5, eval_every=5, temperatures=(0.5,), lr=2e-3, precision="float32"
)


def _worker(rank: int, world: int, port: int, out: str, timeout: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), GLOWTORCH_DIST_TIMEOUT=str(timeout), OMP_NUM_THREADS="1")  # fmt: skip
    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    data, test = load_dataset("digits"), load_dataset("digits", train=False)
    trainer = Trainer(MODEL, TRAIN, data, test, f"{out}/run", dist=dist, log=lambda *a: None)
    trainer.initialize()
    torch.save(trainer.model.state_dict(), f"{out}/init_{rank}.pt")
    shutil.rmtree(f"{out}/run", ignore_errors=True) if rank == 0 else None
    dist.barrier()
    metrics = trainer.run(progress=False)
    torch.save({"model": trainer.model.state_dict(), "ema": trainer.ema.state_dict(), "metrics": metrics},
               f"{out}/final_{rank}.pt")  # fmt: skip
    shutdown()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(2, free_port(), str(out), 60.0), nprocs=2, join=True)
    torch.set_num_threads(1)
    data, test = load_dataset("digits"), load_dataset("digits", train=False)
    single = Trainer(MODEL, TRAIN, data, test, out / "single", log=lambda *a: None)
    single.initialize()
    init = {k: v.clone() for k, v in single.model.state_dict().items()}
    metrics = Trainer(MODEL, TRAIN, data, test, out / "single2", log=lambda *a: None).run(progress=False)
    final = load_model(out / "single2" / "model")
    return out, init, metrics, final


def test_actnorm_init_equals_single_process_on_concatenated_batch(runs) -> None:
    out, init, _, _ = runs
    from glowtorch.layers import ActNorm

    actnorm = [f"{prefix}.{name}" for prefix, module in Glow(MODEL).named_modules() if isinstance(module, ActNorm)
               for name, _ in module.named_parameters(recurse=False)]  # fmt: skip
    assert len(actnorm) == 24  # the flow steps' ActNorms and their coupling networks' (bias and log-scale each)
    for rank in (0, 1):
        state = torch.load(out / f"init_{rank}.pt", weights_only=True)
        for name in actnorm:
            assert not torch.equal(init[name], torch.zeros_like(init[name])), f"{name} was initialized"
            assert_close(state[name], init[name], atol=1e-6, rtol=1e-5, msg=name)


def test_parameters_and_test_bpd_match_single_process(runs) -> None:
    out, _, single_metrics, single_final = runs
    rank0 = torch.load(out / "final_0.pt", weights_only=True)
    rank1 = torch.load(out / "final_1.pt", weights_only=True)
    for name, tensor in rank0["model"].items():
        assert torch.equal(tensor, rank1["model"][name]), f"ranks differ in {name}"
        assert torch.equal(rank0["ema"][name], rank1["ema"][name]), f"EMA differs in {name}"
    for name, tensor in single_final.state_dict().items():
        assert_close(rank0["ema"][name], tensor, atol=1e-5, rtol=1e-4, msg=name)
    assert rank0["metrics"]["test_bpd"] == pytest.approx(single_metrics["test_bpd"], abs=1e-4)
    # the worst training image of the window is found across both processes' halves of each batch
    for key in ("train_worst_image", "train_worst_image_step", "train_images_above_10"):
        assert rank0["metrics"][key] == single_metrics[key], key
    assert rank0["metrics"]["train_worst_image_bpd"] == pytest.approx(single_metrics["train_worst_image_bpd"], rel=1e-4)
    lines = (out / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1, "metrics written by rank 0 only"


def test_sharded_evaluation_equals_single_process(runs) -> None:
    """Evaluation alone, with the same weights: sums over ranks equal one process's (uneven last batch)."""
    _, _, _, model = runs
    test = load_dataset("digits", train=False)  # 297 images: batches of 40 leave a short last one
    single = evaluate_bits_per_dim(model, test, batch_size=40)["test_bpd"]

    class FakeRanks(Distributed):
        def all_reduce_sum(self, tensor):
            return tensor

    parts = [evaluate_bits_per_dim(model, test, 40, dist=FakeRanks(rank=r, world_size=3))["test_bpd"] for r in range(3)]
    assert sum(parts) == pytest.approx(single, abs=1e-9)


def _dying_worker(rank: int, world: int, port: int, result) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      GLOWTORCH_DIST_TIMEOUT="10")  # fmt: skip
    dist = init_distributed("cpu")
    if rank == 1:
        os._exit(3)
    start = time.monotonic()
    try:
        dist.all_reduce_sum(torch.ones(1))
        result.put("no error")
    except Exception as error:  # noqa: BLE001
        result.put(f"{type(error).__name__} after {time.monotonic() - start:.0f}s")


def test_a_dead_rank_does_not_hang_the_others() -> None:
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_dying_worker, args=(r, 2, port, result)) for r in range(2)]
    for p in procs:
        p.start()
    message = result.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
    assert message != "no error"


class _TickingClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.05
        return self.t


def _clock_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank 0's clock runs, rank 1's stands still: the budget runs out on one process only."""
    import glowtorch.train.schedule

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), GLOWTORCH_DIST_TIMEOUT="30", OMP_NUM_THREADS="1")  # fmt: skip
    torch.set_num_threads(1)
    glowtorch.train.schedule.clock = _TickingClock() if rank == 0 else (lambda: 5.0)
    dist = init_distributed("cpu")
    config = TrainConfig(batch_size=16, init_images=32, steps=300, max_minutes=0.05, eval_every=1000,
                         temperatures=(0.5,), precision="float32")  # fmt: skip
    trainer = Trainer(MODEL, config, load_dataset("digits"), None, f"{out}/run", dist=dist, log=lambda *a: None)
    try:
        trainer.run(progress=False)
        result = {"step": trainer.step}
    except Exception as error:  # noqa: BLE001 - the test reports it
        result = {"error": f"{type(error).__name__}: {error}"[:300]}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))
    shutdown()


def test_a_time_budget_used_up_on_one_process_stops_all_at_the_same_step(tmp_path) -> None:
    """Each process reads its own clock (its CPU time, with --budget-clock cpu, differs most): where one
    finds the budget used up, all stop together, instead of one training on into an all-reduce the
    other never joins."""
    mp.spawn(_clock_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert "error" not in results[0] and "error" not in results[1], results
    assert results[0]["step"] == results[1]["step"] < 300  # rank 0's 3 seconds ended both


def run_cli(*argv, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([*argv], capture_output=True, text=True, env=env, timeout=600)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
CLI = ["-m", "glowtorch", "train", "--dataset", "digits", "--levels", "2", "--depth", "1", "--hidden-channels", "8",
       "--batch-size", "16", "--init-images", "32", "--eval-every", "4", "--no-progress",
       "--temperatures", "0.5", "--precision", "float32"]  # fmt: skip


def test_torchrun_cli_and_resume_with_another_process_count(tmp_path) -> None:
    dist_run, single_run = tmp_path / "dist", tmp_path / "single"
    result = run_cli(*TORCHRUN, str(free_port()), *CLI, "--steps", "4", "--out", str(dist_run))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("training on digits") == 1, "rank 0 prints alone"
    assert "Grad strides do not match" not in result.stderr  # gradients fill DDP's buckets without copies
    result = run_cli(sys.executable, *CLI, "--steps", "8", "--out", str(dist_run), "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli(sys.executable, *CLI, "--steps", "8", "--out", str(single_run))
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = load_model(dist_run / "model"), load_model(single_run / "model")
    for name, tensor in b.state_dict().items():
        assert_close(a.state_dict()[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
    steps = [json.loads(line)["step"] for line in (dist_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8]


def test_batch_not_divisible_by_world_size(tmp_path) -> None:
    argv = [*CLI, "--steps", "2", "--out", str(tmp_path / "r")]
    argv[argv.index("--batch-size") + 1] = "15"
    result = run_cli(*TORCHRUN, str(free_port()), *argv)
    assert result.returncode != 0
    assert "must divide by the number of processes (2)" in result.stderr


def test_a_conditional_model_trains_the_same_on_two_processes(tmp_path) -> None:
    """Each process makes the contexts of its own share of the batch: the same model as one process."""
    condition = ["--condition", "lowres:2", "--context-features", "4", "--steps", "4"]
    result = run_cli(*TORCHRUN, str(free_port()), *CLI, *condition, "--out", str(tmp_path / "dist"))
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli(sys.executable, *CLI, *condition, "--out", str(tmp_path / "single"))
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = load_model(tmp_path / "dist" / "model"), load_model(tmp_path / "single" / "model")
    assert a.config.condition == "lowres:2"
    for name, tensor in b.state_dict().items():
        assert_close(a.state_dict()[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
    assert a.context_prior.conv.weight.abs().sum() > 0  # zero at the start: trained from the contexts
