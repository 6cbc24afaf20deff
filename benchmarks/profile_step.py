"""How much of a fast-path training step is convolution: the floor no other optimization can go below.

For each config (bench_speed's A, B, ...) it times the fast path's training step (median of the
timed steps, as bench_speed does), then profiles a few steps with torch.profiler and sums the time
spent inside the convolution kernels, forward and backward. If everything else in the step took no
time at all, the step would take that long: the printed "bound" in images/s. It also prints the time
in concatenations and copies (aten::cat, aten::copy_), what chunk/cat in the couplings cost.

    python benchmarks/profile_step.py --configs A,B
    python benchmarks/profile_step.py --configs A,B --compile

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench_speed import CONFIGS
from glowtorch import Glow, GlowConfig, keep_freed_memory
from glowtorch.train import TrainingObjective, make_optimizer

FORWARD, BACKWARD = "aten::mkldnn_convolution", "aten::convolution_backward"
COPIES = ("aten::cat", "aten::copy_")  # what chunk/cat and layout changes cost


def profile_config(name: str, compile_: bool, steps: int, profiled: int) -> None:
    settings = dict(CONFIGS[name])
    batch = settings.pop("batch")
    torch.manual_seed(0)
    model = Glow(GlowConfig(**settings))
    x = (torch.rand(batch, *model.config.image_shape) - 0.5) * 0.9
    model.initialize(x)
    objective = TrainingObjective(model)
    if compile_:
        objective = torch.compile(objective)
    optimizer = make_optimizer("adamax", list(model.parameters()), lr=1e-4)

    def step() -> None:
        loss, _ = objective(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warmup (and compilation)
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(profiled):
            step()
    self_s = {event.key: event.self_cpu_time_total / 1e6 / profiled for event in prof.key_averages()}
    forward, backward = self_s.get(FORWARD, 0.0), self_s.get(BACKWARD, 0.0)
    conv = forward + backward
    copies = sum(self_s.get(key, 0.0) for key in COPIES)
    print(
        f"{name} ({'compiled' if compile_ else 'eager'}): step {1000 * step_s:.0f} ms ({batch / step_s:.1f} img/s); "
        f"convolutions {1000 * conv:.0f} ms ({1000 * forward:.0f} forward, {1000 * backward:.0f} backward), "
        f"{100 * conv / step_s:.0f}% of the step; bound with nothing else: {batch / conv:.1f} img/s; "
        f"cat and copy_ {1000 * copies:.1f} ms ({100 * copies / step_s:.1f}%)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="A,B")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step")
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--profiled", type=int, default=3, help="profiled steps")
    args = parser.parse_args()
    keep_freed_memory()  # as the glowtorch command does
    for name in args.configs.split(","):
        profile_config(name, args.compile, args.steps, args.profiled)


if __name__ == "__main__":
    main()
