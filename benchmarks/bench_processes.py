"""Threads or processes: the same training on this machine's cores, as one process with several threads
or as several one-thread processes (DistributedDataParallel over gloo, as ``torchrun --nproc_per_node P``
starts them).

For each layout PxT (P processes of T threads each) it starts the P processes with the environment
torchrun would give them, builds a ``Trainer`` of the config in each (the global batch split over the
processes, as ``glowtorch train`` does), trains ``--warmup`` steps (compilation included where the
preset compiles), then times ``--steps`` steps between two barriers, and prints the images per second
of the whole job, the step time, and the CPU time per step (all processes' threads together).

    python benchmarks/bench_processes.py                                  # mnist-cpu: 1x2 and 2x1
    python benchmarks/bench_processes.py --layouts 1x1,1x2,2x1 --precision float32

Every layout computes the same global batches (the processes take their shares of the batch one
process would take), so the figures compare the same training. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_limit import CONFIGS as LIMIT_CONFIGS  # noqa: E402
from bench_limit import cpu_model, make_trainer, train_step  # noqa: E402

# bench_limit's configs, and a tiny one that checks the machinery in seconds
CONFIGS = {**LIMIT_CONFIGS, "smoke": ((1, 8, 8), dict(levels=2, depth=2, hidden_channels=16), dict(batch_size=4))}


def parse_layout(text: str) -> tuple[int, int]:
    """``"PxT"`` -> ``(P, T)``, both positive."""
    try:
        processes, threads = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a layout is PROCESSESxTHREADS, like 2x1; got {text!r}") from None
    if processes < 1 or threads < 1:
        raise argparse.ArgumentTypeError(f"processes and threads must be positive; got {text!r}")
    return processes, threads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args) -> None:
    """One process of a layout (started by ``run_layout``): trains, times, and rank 0 prints one JSON line."""
    from glowtorch.distributed import init_distributed

    torch.set_num_threads(args.threads)
    dist = init_distributed()
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stderr(io.StringIO()):
        bench = make_trainer(args.config, args.precision, folder, args.compile, dist=dist, configs=CONFIGS)
        trainer, batch = bench.trainer, bench.batch
        for _ in range(args.warmup):
            train_step(bench)
        dist.barrier()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            train_step(bench)
        dist.barrier()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    cpu_total = dist.all_reduce_sum(torch.tensor([cpu], dtype=torch.float64)).item()
    if dist.is_main:
        print(json.dumps(dict(
            layout=f"{dist.world_size}x{args.threads}", precision=trainer.precision.precision, batch=batch,
            images_per_s=args.steps * batch / wall, step_ms=wall / args.steps * 1e3,
            cpu_ms_per_step=cpu_total / args.steps * 1e3,
        )))  # fmt: skip


def run_layout(args, processes: int, threads: int) -> dict:
    """Starts the layout's processes and returns rank 0's measurements."""
    port = free_port()
    flags = ["--config", args.config, "--precision", args.precision, "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--threads", str(threads)]  # fmt: skip
    if args.compile is not None:
        flags.append("--compile" if args.compile else "--no-compile")
    children = []
    for rank in range(processes):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}  # fmt: skip
        children.append(subprocess.Popen([sys.executable, __file__, "--worker", *flags], env=env,
                                          stdout=subprocess.PIPE, text=True))  # fmt: skip
    outputs = [child.communicate()[0] for child in children]
    if any(child.returncode for child in children):
        raise SystemExit(f"layout {processes}x{threads} failed (exit codes {[c.returncode for c in children]})")
    return json.loads(outputs[0].strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="mnist-cpu", choices=sorted(CONFIGS))
    parser.add_argument("--layouts", default="1x2,2x1", help="comma-separated PROCESSESxTHREADS")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="default: as the config's preset")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    layouts = [parse_layout(part) for part in args.layouts.split(",")]
    print(f"{cpu_model()}; {os.cpu_count()} CPUs; torch {torch.__version__}; {args.config}, "
          f"--precision {args.precision}, {args.steps} steps after {args.warmup}")  # fmt: skip
    print("| layout | precision | images/s | step (ms) | CPU per step (ms) |")
    print("|---|---|---|---|---|")
    for processes, threads in layouts:
        r = run_layout(args, processes, threads)
        print(f"| {r['layout']} | {r['precision']} | {r['images_per_s']:.0f} | {r['step_ms']:.0f} | "
              f"{r['cpu_ms_per_step']:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
