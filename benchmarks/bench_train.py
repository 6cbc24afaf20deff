"""Training throughput of a preset (default mnist-cpu), and the share of it spent outside the model.

Runs the same model twice: a bare loop (forward + backward + optimizer step on ready-made batches)
and glowtorch's real training loop (data indexing, dequantization, EMA, logging, progress bar), and
prints images/s of both and the real loop's share of time spent outside the model, then the optimizer
step's time as PyTorch's default per-parameter loop and as the trainer computes it.

    python benchmarks/bench_train.py --data-dir ../shared/data/mnist --steps 200

Without --data-dir it uses random uint8 images of the preset's shape (same cost per step).
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from glowtorch import Glow, GlowConfig, dequantize, keep_freed_memory
from glowtorch.data import Dataset, load_dataset
from glowtorch.presets import preset_settings
from glowtorch.train import TrainConfig, TrainingObjective, make_optimizer, train


def bare_loop(
    model_config: GlowConfig, train_config: TrainConfig, images: torch.Tensor, warmup: int, steps: int
) -> float:
    torch.manual_seed(0)
    model = Glow(model_config, train_config.compute_config())
    model.initialize(dequantize(images[: train_config.init_images], model_config.n_bits))
    optimizer = make_optimizer(train_config.optimizer, list(model.parameters()), train_config.lr)  # as the trainer
    batch = train_config.batch_size
    batches = [dequantize(images[i * batch : (i + 1) * batch], model_config.n_bits) for i in range(8)]
    objective = TrainingObjective(model)
    if train_config.compile:  # as the training loop does; the warmup steps include the compilation
        objective = torch.compile(objective)
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        loss, _ = objective(batches[step % 8])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def optimizer_step_ms(model_config: GlowConfig, train_config: TrainConfig, repeats: int = 50) -> tuple[float, float]:
    """Median milliseconds of one optimizer step over the model's parameters: PyTorch's default
    per-parameter loop, and the kernel glowtorch's trainer uses (make_optimizer)."""
    model = Glow(model_config, train_config.compute_config())
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    loop_cls = torch.optim.Adamax if train_config.optimizer == "adamax" else torch.optim.Adam
    medians = []
    for optimizer in (
        loop_cls(params, lr=train_config.lr, foreach=False),
        make_optimizer(train_config.optimizer, params, train_config.lr),
    ):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - start)
        medians.append(1000 * statistics.median(times[5:]))
    return medians[0], medians[1]


def full_loop(model_config: GlowConfig, train_config: TrainConfig, data: Dataset, warmup: int, steps: int) -> float:
    overrides = {"steps": warmup + steps, "eval_every": warmup, "max_minutes": None, "epochs": None}
    config = TrainConfig(**{**train_config.to_dict(), **overrides})
    with tempfile.TemporaryDirectory() as run_dir:
        train(model_config, config, data, None, run_dir, progress=True, log=lambda line: None)
        lines = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    return lines[-1]["train_images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist-cpu")
    parser.add_argument("--data-dir")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    keep_freed_memory()  # as the glowtorch command does
    settings = preset_settings(args.preset)
    if args.data_dir:
        data = load_dataset(settings.dataset, args.data_dir, train=True)
    else:
        shape = (
            load_dataset(settings.dataset, None, train=True).image_shape
            if settings.dataset == "digits"
            else (1, 28, 28)
        )
        data = Dataset(torch.randint(0, 256, (20000, *shape), dtype=torch.uint8))
    model_config = GlowConfig(image_shape=data.image_shape, **settings.model)
    train_config = TrainConfig(**settings.train)
    print(
        f"preset {args.preset}: image {data.image_shape}, L={model_config.levels} K={model_config.depth} "
        f"width={model_config.hidden_channels}, batch {train_config.batch_size}, compile {train_config.compile}, "
        f"{torch.get_num_threads()} threads"
    )
    bare = bare_loop(model_config, train_config, data.images, args.warmup, args.steps)
    full = full_loop(model_config, train_config, data, args.warmup, args.steps)
    bare_again = bare_loop(model_config, train_config, data.images, args.warmup, args.steps)
    model_only = (bare + bare_again) / 2
    print(f"model only (forward+backward+step): {bare:.1f} and {bare_again:.1f} images/s (mean {model_only:.1f})")
    print(f"glowtorch training loop:            {full:.1f} images/s")
    print(f"share of time outside the model:    {100 * (1 - full / model_only):.1f}%")
    loop_ms, fast_ms = optimizer_step_ms(model_config, train_config)
    print(
        f"{train_config.optimizer} step: {loop_ms:.2f} ms as a per-parameter loop, {fast_ms:.2f} ms as the trainer "
        f"does it; a training step at the model-only speed takes {1000 * train_config.batch_size / model_only:.1f} ms"
    )


if __name__ == "__main__":
    main()
