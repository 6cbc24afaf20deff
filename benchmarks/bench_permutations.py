"""Training-step time of each permutation (reverse, shuffle, plain 1x1 conv, LU 1x1 conv), all else equal.

The ablation (experiments/ablation.py) reports images/s of whole runs, evaluations included; this times
the training step alone, the permutations in turn and the whole round repeated, so that a slow moment
of the machine does not favour one of them.

    python benchmarks/bench_permutations.py                      # the ablation's MNIST model
    python benchmarks/bench_permutations.py --image-shape 3,32,32 --levels 3 --depth 8 --hidden-channels 128
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from glowtorch import Glow, GlowConfig, keep_freed_memory
from glowtorch.train import TrainingObjective, make_optimizer

PERMUTATIONS = ("reverse", "shuffle", "invconv", "lu")


def step_ms(config: GlowConfig, batch: int, steps: int, warmup: int) -> float:
    """Median milliseconds of a training step (forward, backward, Adam step) on random inputs."""
    torch.manual_seed(0)
    model = Glow(config)
    x = (torch.rand(batch, *config.image_shape) - 0.5) * 0.9
    model.initialize(x)
    objective = TrainingObjective(model)
    optimizer = make_optimizer("adam", list(model.parameters()), 1e-4)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss, _ = objective(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-shape", default="1,28,28")
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--hidden-channels", type=int, default=64)
    parser.add_argument("--coupling", default="affine")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    keep_freed_memory()
    shape = tuple(int(v) for v in args.image_shape.split(","))
    results: dict[str, list[float]] = {p: [] for p in PERMUTATIONS}
    for _ in range(args.rounds):
        for permutation in PERMUTATIONS:
            config = GlowConfig(image_shape=shape, levels=args.levels, depth=args.depth,
                                hidden_channels=args.hidden_channels, coupling=args.coupling,
                                permutation=permutation)  # fmt: skip
            results[permutation].append(step_ms(config, args.batch, args.steps, args.warmup))
    print(f"image {shape}, L={args.levels} K={args.depth} width {args.hidden_channels}, {args.coupling}, "
          f"batch {args.batch}, {torch.get_num_threads()} threads; median of {args.steps} steps per round")  # fmt: skip
    for permutation, values in results.items():
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"{permutation:8s} {statistics.fmean(values):7.1f} ms/step (rounds: {rounds})")


if __name__ == "__main__":
    main()
