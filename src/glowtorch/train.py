"""Training and evaluation loops.

A run directory holds::

    train_config.json            the training options (TrainConfig)
    metrics.jsonl                one JSON line per evaluation
    bpd.png                      train and test bits/dim against step and wall time
    samples/step_XXXXXXX.png     sample grids, one row per temperature
    model/                       config.json + model.safetensors (EMA weights): the shareable model
    checkpoints/step_XXXXXXX.pt  training state for --resume (loaded with weights_only=True)

All randomness of a step (data order, dequantization noise, flips) is derived from (seed, step), so
a resumed run sees exactly the data an uninterrupted run would.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .checkpoint import CheckpointError, atomic_write, save_model
from .data import Dataset, random_flip
from .images import save_grid
from .latent import temperature_grid
from .metrics import nll_bits_per_dim
from .model import Glow, GlowConfig
from .plots import plot_metrics
from .preprocess import dequantize

__all__ = ["TrainConfig", "evaluate_bits_per_dim", "train"]

CHECKPOINT_PREFIX = "step_"


@dataclass(frozen=True)
class TrainConfig:
    """Training options (the model's architecture is a separate ``GlowConfig``).

    Attributes:
        batch_size: images per optimizer step (global, over all processes).
        optimizer: "adamax" (reference code) or "adam".
        lr: peak learning rate, reached linearly over ``warmup_steps``.
        grad_clip: maximum gradient norm (0 disables clipping).
        ema_decay: Polyak averaging of the weights used for evaluation and sampling (0 disables).
        init_images: images used for ActNorm's data-dependent initialization.
        weight_y: weight of the class-prediction loss (bits per image) of conditional models.
        flip: random horizontal flips of training images.
        epochs / steps / max_minutes: stop at whichever comes first (at least one must be set).
        eval_every: steps between evaluations and checkpoints; 0 means once per epoch.
        eval_draws: dequantization draws averaged for test bits/dim.
        temperatures, samples_per_row: the sample grid's rows and columns.
        keep_checkpoints: how many training-state files to keep.
        max_bad_steps: consecutive non-finite steps before training stops.
    """

    batch_size: int = 64
    optimizer: str = "adamax"
    lr: float = 1e-3
    warmup_steps: int = 500
    grad_clip: float = 50.0
    ema_decay: float = 0.999
    init_images: int = 512
    weight_y: float = 0.01
    flip: bool = False
    epochs: int | None = None
    steps: int | None = None
    max_minutes: float | None = None
    eval_every: int = 0
    eval_batch_size: int = 500
    eval_draws: int = 1
    temperatures: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 1.0)
    samples_per_row: int = 10
    keep_checkpoints: int = 2
    max_bad_steps: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))
        checks = [
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.optimizer in ("adam", "adamax"), "optimizer must be adam or adamax"),
            (self.lr > 0 and math.isfinite(self.lr), "lr must be a positive number"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (self.init_images >= 1, "init_images must be >= 1"),
            (self.weight_y >= 0, "weight_y must be >= 0"),
            (self.epochs is None or self.epochs >= 1, "epochs must be >= 1"),
            (self.steps is None or self.steps >= 1, "steps must be >= 1"),
            (self.max_minutes is None or self.max_minutes > 0, "max_minutes must be > 0"),
            (
                any(v is not None for v in (self.epochs, self.steps, self.max_minutes)),
                "set epochs, steps or max_minutes",
            ),
            (self.eval_every >= 0, "eval_every must be >= 0"),
            (self.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
            (self.eval_draws >= 1, "eval_draws must be >= 1"),
            (all(t >= 0 for t in self.temperatures) and self.temperatures, "temperatures must be >= 0"),
            (self.samples_per_row >= 1, "samples_per_row must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.max_bad_steps >= 1, "max_bad_steps must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(unknown)}")
        return cls(**values)


# --------------------------------------------------------------------------- helpers
def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator determined by (seed, step, stream): the randomness of one training step."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + stream) % (2**63))


def epoch_order(num_images: int, seed: int, epoch: int) -> Tensor:
    """The training images' order in ``epoch`` (a permutation determined by seed and epoch)."""
    return torch.randperm(num_images, generator=step_generator(seed, epoch, stream=1))


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then constant (reference code)."""
    if config.warmup_steps == 0:
        return config.lr
    return config.lr * min(1.0, (step + 1) / config.warmup_steps)


def model_loss(
    model: torch.nn.Module, x: Tensor, y: Tensor | None, config: GlowConfig, weight_y: float
) -> tuple[Tensor, Tensor]:
    """(total loss, mean bits/dim): bits/dim of x, plus ``weight_y`` x class cross-entropy in bits when conditional."""
    zs, logdet, log_prior = model(x, y)
    bpd = nll_bits_per_dim(log_prior + logdet, config.num_dims, config.n_bits).mean()
    loss = bpd
    if y is not None and weight_y > 0:
        glow = model.module if hasattr(model, "module") else model
        logits = glow.classifier_logits(zs[-1])
        loss = loss + weight_y * F.cross_entropy(logits, y) / math.log(2.0)
    return loss, bpd


@torch.no_grad()
def evaluate_bits_per_dim(
    model: Glow,
    dataset: Dataset,
    batch_size: int = 500,
    draws: int = 1,
    seed: int = 1234,
    progress: bool = False,
) -> dict[str, float]:
    """Test bits/dim over the whole dataset: per-image values summed in float64 and divided by N
    (not a mean of batch means), averaged over ``draws`` fixed-seed dequantization draws.
    Conditional models are scored with the true labels and also report the classifier's accuracy."""
    from tqdm import tqdm

    model.eval()
    config = model.config
    device = model.top_prior.device
    conditional = config.num_classes > 0 and dataset.labels is not None
    total, correct = 0.0, 0
    batches = [(d, s) for d in range(draws) for s in range(0, len(dataset), batch_size)]
    for draw, start in tqdm(batches, desc="evaluating", leave=False, disable=not progress):
        images = dataset.images[start : start + batch_size].to(device)
        generator = step_generator(seed, start, stream=100 + draw)
        x = dequantize(images, config.n_bits, generator=generator).to(device=device, dtype=model.top_prior.dtype)
        y = dataset.labels[start : start + batch_size].to(device) if conditional else None
        zs, logdet, log_prior = model(x, y)
        total += nll_bits_per_dim(log_prior + logdet, config.num_dims, config.n_bits).double().sum().item()
        if conditional and draw == 0:
            correct += (model.classifier_logits(zs[-1]).argmax(1) == y).sum().item()
    result = {"test_bpd": total / (draws * len(dataset))}
    if conditional:
        result["test_accuracy"] = correct / len(dataset)
    return result


def _class_row(model: Glow, per_row: int) -> Tensor | None:
    if model.config.num_classes == 0:
        return None
    return torch.arange(per_row) % model.config.num_classes


# --------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": repr(random.getstate()),
    }


def _set_rng_state(state: dict) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate(ast.literal_eval(state["python"]))


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Training-state files, oldest first."""
    return sorted((run_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*.pt"))


def save_training_state(run_dir: Path, state: dict, step: int, keep: int) -> Path:
    directory = run_dir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{CHECKPOINT_PREFIX}{step:08d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    for old in checkpoint_paths(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_training_state(run_dir: Path) -> dict:
    """The newest readable training state of ``run_dir`` (a corrupt newest file falls back to an older one)."""
    errors = []
    for path in reversed(checkpoint_paths(run_dir)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file: try the previous one
            errors.append(f"{path.name}: {str(error).splitlines()[0]}")
    if errors:
        raise CheckpointError(f"no readable training state in {run_dir / 'checkpoints'} ({'; '.join(errors)})")
    raise CheckpointError(
        f"nothing to resume: {run_dir / 'checkpoints'} holds no training state; train without --resume"
    )


# --------------------------------------------------------------------------- the loop
class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (then it saves and exits)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _make_optimizer(model: Glow, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.Adamax if config.optimizer == "adamax" else torch.optim.Adam
    return cls(params, lr=config.lr)


@torch.no_grad()
def _update_ema(ema: Glow, model: Glow, decay: float) -> None:
    for ema_p, p in zip(ema.parameters(), model.parameters(), strict=True):
        ema_p.lerp_(p, 1.0 - decay)
    for ema_b, b in zip(ema.buffers(), model.buffers(), strict=True):
        ema_b.copy_(b)


def train(
    model_config: GlowConfig,
    config: TrainConfig,
    train_data: Dataset,
    test_data: Dataset | None,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
    log=print,
) -> dict:
    """Trains a Glow model, writing the run directory described in this module's docstring.

    Returns the last metrics line. SIGINT/SIGTERM end the run after the current step with a checkpoint.
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    if tuple(train_data.image_shape) != model_config.image_shape:
        raise ValueError(
            f"training images are {train_data.image_shape} but the model expects {model_config.image_shape}"
        )
    if model_config.num_classes and train_data.labels is None:
        raise ValueError("a class-conditional model needs a dataset with labels")
    if len(train_data) < config.batch_size:
        raise ValueError(f"the training set has {len(train_data)} images, fewer than one batch ({config.batch_size})")
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = Glow(model_config).to(device)
    optimizer = _make_optimizer(model, config)
    ema = copy.deepcopy(model) if config.ema_decay > 0 else model
    step, bad_steps_total = 0, 0
    elapsed_before = 0.0
    if resume:
        state = load_training_state(run_dir)
        if state["model_config"] != model_config.to_dict():
            raise CheckpointError(
                f"the run in {run_dir} was trained with another model config; resume it with the same preset and flags"
            )
        model.load_state_dict(state["model"])
        if ema is not model:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, bad_steps_total, elapsed_before = state["step"], state["bad_steps"], state["elapsed"]
        _set_rng_state(state["rng"])
        log(f"resuming {run_dir} from step {step}")
    else:
        order = torch.randperm(len(train_data), generator=step_generator(config.seed, 0, stream=2))
        init = train_data.images[order[: config.init_images]]
        init_x = dequantize(init, model_config.n_bits, generator=step_generator(config.seed, 0, stream=3)).to(device)
        model.initialize(init_x)
        if ema is not model:
            ema.load_state_dict(model.state_dict())
        atomic_write(
            run_dir / "train_config.json", lambda p: Path(p).write_text(json.dumps(config.to_dict(), indent=2))
        )

    steps_per_epoch = len(train_data) // config.batch_size
    eval_every = config.eval_every or steps_per_epoch
    max_steps = (
        min(s for s in (config.steps, config.epochs and config.epochs * steps_per_epoch) if s)
        if (config.steps or config.epochs)
        else None
    )
    deadline = time.monotonic() + config.max_minutes * 60 - elapsed_before if config.max_minutes else None
    conditional = model_config.num_classes > 0
    metrics_path = run_dir / "metrics.jsonl"
    last_metrics: dict = {}
    consecutive_bad = 0
    start_time = time.monotonic() - elapsed_before
    window_images, window_start, running_bpd = 0, time.monotonic(), None
    interval = {"images": 0, "start": time.monotonic()}  # training throughput between evaluations

    def checkpoint_and_evaluate() -> dict:
        nonlocal last_metrics
        train_seconds = time.monotonic() - interval["start"]
        metrics = {
            "step": step,
            "epoch": step / steps_per_epoch,
            "elapsed_s": round(time.monotonic() - start_time, 2),
            "train_bpd": running_bpd,
            "train_images_per_s": round(interval["images"] / max(train_seconds, 1e-9), 2),
            "bad_steps": bad_steps_total,
        }
        if test_data is not None:
            metrics.update(evaluate_bits_per_dim(ema, test_data, config.eval_batch_size, config.eval_draws))
        grid = temperature_grid(
            ema,
            config.temperatures,
            config.samples_per_row,
            generator_seed=config.seed,
            y=_class_row(ema, config.samples_per_row),
        )
        (run_dir / "samples").mkdir(exist_ok=True)
        save_grid(grid, run_dir / "samples" / f"step_{step:08d}.png", columns=config.samples_per_row, scale=2)
        save_model(ema, run_dir / "model", metadata={"step": str(step)})
        state = {
            "model_config": model_config.to_dict(),
            "train_config": config.to_dict(),
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "bad_steps": bad_steps_total,
            "elapsed": time.monotonic() - start_time,
            "rng": _rng_state(),
        }
        save_training_state(run_dir, state, step, config.keep_checkpoints)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        plot_metrics(metrics_path, run_dir / "bpd.png")
        last_metrics = metrics
        log(json.dumps(metrics))
        interval.update(images=0, start=time.monotonic())
        return metrics

    bar = tqdm(total=max_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True, mininterval=1.0)
    with _StopRequest() as stop:
        while True:
            if max_steps is not None and step >= max_steps:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if stop.signal is not None:
                log(f"received signal {stop.signal}: saving a checkpoint at step {step} and stopping")
                break
            epoch, index = divmod(step, steps_per_epoch)
            batch = epoch_order(len(train_data), config.seed, epoch)[
                index * config.batch_size : (index + 1) * config.batch_size
            ]
            images = train_data.images[batch]
            if config.flip:
                images = random_flip(images, step_generator(config.seed, step, stream=4))
            x = dequantize(images, model_config.n_bits, generator=step_generator(config.seed, step, stream=5)).to(
                device
            )
            y = train_data.labels[batch].to(device) if conditional else None
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            loss, bpd = model_loss(model, x, y, model_config, config.weight_y)
            optimizer.zero_grad(set_to_none=True)
            finite = bool(torch.isfinite(loss))
            if finite:
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or float("inf"))
                finite = bool(torch.isfinite(norm))
            if finite:
                optimizer.step()
                if ema is not model:
                    _update_ema(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
                consecutive_bad = 0
                value = bpd.item()
                running_bpd = value if running_bpd is None else 0.98 * running_bpd + 0.02 * value
            else:
                bad_steps_total += 1
                consecutive_bad += 1
                if consecutive_bad >= config.max_bad_steps:
                    bar.close()
                    raise FloatingPointError(
                        f"{consecutive_bad} consecutive non-finite steps at step {step}: lower --lr or raise "
                        "--warmup-steps, then --resume from the last checkpoint"
                    )
            step += 1
            window_images += len(batch)
            interval["images"] += len(batch)
            bar.update(1)
            now = time.monotonic()
            if now - window_start > 2.0:
                bar.set_postfix(
                    bpd=f"{running_bpd:.3f}" if running_bpd else "nan",
                    img_s=f"{window_images / (now - window_start):.0f}",
                )
                window_images, window_start = 0, now
            if step % eval_every == 0:
                checkpoint_and_evaluate()
        bar.close()
        if not last_metrics or last_metrics["step"] != step:
            checkpoint_and_evaluate()
    return last_metrics
