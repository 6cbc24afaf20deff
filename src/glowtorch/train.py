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
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import (
    CheckpointError,
    checkpoint_paths,
    checkpoint_step,
    load_training_state,
    require_new_run,
    rng_state,
    save_model,
    save_training_state,
    set_rng_state,
)
from .data import Dataset, epoch_order, random_flip, random_shift, step_generator
from .distributed import Distributed
from .evaluate import evaluate_bits_per_dim
from .files import atomic_write, first_line
from .images import save_grid
from .latent import temperature_grid
from .memory import MEMORY_MODES
from .metrics import nll_bits_per_dim
from .model import ComputeConfig, Glow, GlowConfig, dataclass_from_dict
from .plots import plot_metrics, read_metrics
from .precision import PRECISION_CHOICES, PrecisionChoice, resolve_precision
from .preprocess import dequantize
from .signals import StopRequest

__all__ = [
    "OUTLIER_BPD",
    "StepRecord",
    "TrainConfig",
    "Trainer",
    "TrainingObjective",
    "TrainingWindow",
    "fit_class_prior",
    "learning_rate",
    "make_optimizer",
    "train",
]


PACE_MIN_WARMUP = 20  # "auto" decay: fewest warmup steps to time the training step over


def steps_or_auto(text: str) -> int | str:
    """Parses ``--decay-steps``: a whole number of steps, or "auto"."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a number of steps nor auto") from None


@dataclass(frozen=True)
class TrainConfig:
    """Training options: how to train and how the model computes meanwhile (its architecture is a
    separate ``GlowConfig``).

    Attributes:
        batch_size: images per optimizer step: the global batch, split evenly over all processes.
        optimizer: "adamax" (reference code) or "adam".
        lr: peak learning rate, reached linearly over warmup_steps.
        warmup_steps: steps of the linear learning-rate warmup from 0 to lr.
        decay_steps: when set, the learning rate decays from lr to 0 along a cosine between
            warmup_steps and decay_steps (default: constant after warmup). "auto" (with max_minutes)
            paces the decay to the time budget: at the end of warmup the run measures its own speed and
            fixes decay_steps to the step it expects to reach when max_minutes is up (logged, and kept
            on --resume), so the learning rate reaches 0 at the end on a slow machine or a fast one.
        grad_clip: maximum gradient norm (0 disables clipping).
        ema_decay: Polyak averaging of the weights used for evaluation and sampling (0 disables).
        init_images: training images used for ActNorm's data-dependent initialization.
        weight_y: weight of the class-prediction loss (bits per image) of conditional models.
        flip: random horizontal flips of training images.
        shift: random translation of training images by up to this many whole pixels on each axis
            (zero-filled); 0 disables it. The test split is never augmented.
        epochs: stop after this many passes over the training set.
        steps: stop after this many optimizer steps.
        max_minutes: stop after this much training time. Training stops at whichever of epochs,
            steps and max_minutes comes first; at least one must be set.
        eval_every: steps between evaluations and checkpoints; 0 means once per epoch.
        eval_batch_size: images per batch when evaluating (does not change the result).
        eval_draws: dequantization draws averaged for test bits/dim.
        temperatures: the sample grid's rows, one temperature each.
        samples_per_row: the sample grid's columns.
        keep_checkpoints: how many training-state files to keep.
        max_bad_steps: consecutive non-finite steps before training rolls back or stops.
        seed: seed of every random choice of the run (initialization, data order, noise).
        compile: run the training step through torch.compile (about a minute of compilation
            first; on CPU it needs a C++ compiler). Evaluation and sampling stay eager.
        memory: how backprop stores activations: "standard", "checkpoint" (per step) or "reversible"
            (none: rebuilt from the outputs with the inverse; memory flat in depth). Same results.
        precision: "auto" (bfloat16 coupling networks where a short measurement of this device finds them
            at least 1.2x faster than float32, else float32; a resumed run keeps its first choice),
            "float32", or "bfloat16" for the coupling networks only (autocast).
        channels_last: compute in NHWC memory order (faster convolutions on CPU). Same results.
    """

    batch_size: int = 64
    optimizer: str = field(default="adamax", metadata={"choices": ("adam", "adamax")})
    lr: float = 1e-3
    warmup_steps: int = 500
    decay_steps: int | str | None = field(default=None, metadata={"parse": steps_or_auto})
    grad_clip: float = 50.0
    ema_decay: float = 0.999
    init_images: int = 512
    weight_y: float = 0.01
    flip: bool = False
    shift: int = 0
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
    compile: bool = False
    memory: str = field(default="standard", metadata={"choices": MEMORY_MODES})
    precision: str = field(default="auto", metadata={"choices": PRECISION_CHOICES})
    channels_last: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))
        checks = [
            (self.precision in PRECISION_CHOICES, f"precision must be one of {', '.join(PRECISION_CHOICES)}"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.optimizer in ("adam", "adamax"), "optimizer must be adam or adamax"),
            (self.lr > 0 and math.isfinite(self.lr), "lr must be a positive number"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (
                self.decay_steps in (None, "auto")
                or (type(self.decay_steps) is int and self.decay_steps > self.warmup_steps),
                "decay_steps must be auto or a number of steps above warmup_steps",
            ),
            (
                self.decay_steps != "auto" or self.max_minutes is not None,
                "decay_steps auto paces the decay to max_minutes: set max_minutes, or give decay_steps as a number",
            ),
            (
                self.decay_steps != "auto" or self.warmup_steps >= PACE_MIN_WARMUP,
                f"decay_steps auto measures the training speed during warmup: set warmup_steps >= {PACE_MIN_WARMUP}",
            ),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (self.init_images >= 1, "init_images must be >= 1"),
            (self.weight_y >= 0, "weight_y must be >= 0"),
            (self.shift >= 0, "shift must be >= 0"),
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
        self.compute_config()  # validates memory

    def compute_config(self) -> ComputeConfig:
        """How the model computes during training; "auto" precision is float32 until a run resolves it."""
        precision = "float32" if self.precision == "auto" else self.precision
        return ComputeConfig(memory=self.memory, precision=precision, channels_last=self.channels_last)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        return dataclass_from_dict(cls, values, "training options")


# --------------------------------------------------------------------------- helpers
def paced_decay_steps(
    step: int, steps_per_s: float, seconds_left: float, eval_every: int, eval_images: int, batch_size: int
) -> int:
    """The step at which a cosine decay paced to the time budget ends: ``step`` plus the training steps
    expected in ``seconds_left`` at ``steps_per_s``, less the time of the evaluations in between
    (``eval_images`` test images every ``eval_every`` steps, each estimated at a third of the work of
    an image in a training step: a forward pass without the backward). At least one step on."""
    eval_share = eval_images / (3 * batch_size * eval_every) if eval_every else 0.0
    return step + max(1, int(steps_per_s * seconds_left / (1.0 + eval_share)))


def learning_rate(config: TrainConfig, step: int, scale: float = 1.0) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then constant (reference code) or, with
    ``decay_steps``, a cosine decay to 0 at step ``decay_steps``; times ``scale`` (after rollbacks)."""
    warmup = 1.0 if config.warmup_steps == 0 else min(1.0, (step + 1) / config.warmup_steps)
    decay = 1.0
    if isinstance(config.decay_steps, int):  # "auto" is resolved at the end of warmup, before the decay starts
        progress = (step - config.warmup_steps) / max(1, config.decay_steps - config.warmup_steps)
        decay = 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return config.lr * warmup * decay * scale


def optimizer_kernel(name: str, params: list[nn.Parameter], save_memory: bool = False) -> dict[str, bool]:
    """How the optimizer's step is computed (never what). Adam: the fused kernel on CPU and CUDA (one
    pass over each parameter, no temporaries). Adamax: the foreach kernels (one call for all
    parameters), unless ``save_memory``: they allocate temporaries the size of all the gradients at
    once, so the memory-saving modes keep the per-parameter loop."""
    if name == "adamax":
        return {"foreach": not save_memory}
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return {"fused": fused, "foreach": not fused and not save_memory}


def make_optimizer(
    name: str, params: list[nn.Parameter], lr: float, save_memory: bool = False
) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` or ``Adamax`` (``name``: "adam" / "adamax") over ``params`` with the fastest
    step this device has that fits ``save_memory`` (:func:`optimizer_kernel`); same update as the
    default per-parameter loop."""
    cls = torch.optim.Adamax if name == "adamax" else torch.optim.Adam
    return cls(params, lr=lr, **optimizer_kernel(name, params, save_memory))


class TrainingObjective(nn.Module):
    """The training loss as a module, so DistributedDataParallel sees every parameter used in one forward.

    ``forward(x, y) -> (loss, bits/dim (B,))``: the loss is the mean bits/dim of ``x`` plus, for
    class-conditional models, ``weight_y`` times the latent classifier's cross-entropy in bits per image
    (reference code); each image's bits/dim comes back too, for the training diagnostics.
    """

    def __init__(self, model: Glow, weight_y: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.weight_y = weight_y

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        config = self.model.config
        zs, logdet, log_prior = self.model(x, y)
        per_image = nll_bits_per_dim(log_prior + logdet, config.num_dims, config.n_bits)
        bpd = per_image.mean()
        if y is None:
            return bpd, per_image.detach()
        logits = self.model.classifier_logits(zs[-1])
        return bpd + self.weight_y * F.cross_entropy(logits, y) / math.log(2.0), per_image.detach()


@torch.no_grad()
def fit_class_prior(
    model: Glow, images: Tensor, labels: Tensor, batch_size: int = 500, seed: int = 0, progress: bool = False
) -> Glow:
    """A class-conditional model with a ``class_prior="spatial"`` top prior at its maximum-likelihood value
    for the model's flow: each class's prior becomes the mean and standard deviation, at every position,
    of the top latents of that class's ``images`` (uint8 ``(N, C, H, W)``, one dequantization draw each,
    from ``seed``). The flow is untouched, so it stays exactly invertible, and the mean log-likelihood of
    ``images`` under their own classes can only rise for those draws.

    A spatial model is fitted in place and returned; a ``"channel"`` model is left as it is and a new
    spatial model with its flow weights is returned.

    Args:
        labels: ``(N,)`` each image's class; every class needs at least two images.
    """
    from tqdm import tqdm

    config = model.config
    if config.num_classes == 0:
        raise ValueError("fitting a class prior needs a class-conditional model")
    labels = labels.long().cpu()
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels: give one label per image")
    if len(labels) and (labels.min() < 0 or labels.max() >= config.num_classes):
        raise ValueError(
            f"labels run from {int(labels.min())} to {int(labels.max())}, but the model has classes 0 to "
            f"{config.num_classes - 1}: use the labels it was trained with"
        )
    counts = torch.bincount(labels, minlength=config.num_classes).double()
    if (counts < 2).any():
        short = ", ".join(str(c) for c in torch.nonzero(counts < 2).flatten().tolist())
        raise ValueError(f"every class needs at least two labelled images; class(es) {short} have fewer")
    if config.class_prior != "spatial":
        spatial = Glow(dataclasses.replace(config, class_prior="spatial"), model.compute).to(model.top_prior)
        flow = {k: v for k, v in model.state_dict().items() if not k.startswith("label_prior.")}
        spatial.load_state_dict(flow, strict=False)  # only label_prior differs, and it is set below
        model = spatial
    model.eval()
    ref = model.top_prior
    shape = (config.num_classes, model.top_channels, *ref.shape[2:])
    sums, squares = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    for start in tqdm(range(0, len(images), batch_size), desc="fitting", leave=False, disable=not progress):
        x = dequantize(images[start : start + batch_size], config.n_bits, generator=generator).to(ref)
        y = labels[start : start + batch_size]
        top = model(x, y.to(ref.device))[0][-1].double().cpu()  # the top latent does not depend on y
        sums.index_add_(0, y, top)
        squares.index_add_(0, y, top * top)
    view = (-1, 1, 1, 1)
    mean = sums / counts.view(view)
    variance = (squares / counts.view(view) - mean * mean).clamp_min(1e-12)
    # top_prior_params: channel 2k of (top_prior + label_prior(onehot)) is mean k, 2k + 1 its log-std.
    per_class = torch.stack([mean, 0.5 * variance.log()], dim=2).reshape(config.num_classes, -1)
    model.top_prior.zero_()
    model.label_prior.weight.copy_(per_class.T.to(ref))
    model.label_prior.bias.zero_()
    return model


def _write(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def progress_line(metrics: dict, max_steps: int | None = None, max_minutes: float | None = None) -> str:
    """One evaluation as a person reads it, e.g. ``step 1875 | epoch 1.0 | train 2.050 | test 1.901 bits/dim
    (median 1.931) | 354 img/s | 2:51 elapsed, ~5:09 left`` (the whole line is in metrics.jsonl)."""
    parts = [f"step {metrics['step']}", f"epoch {metrics['epoch']:.1f}"]
    train_bpd = metrics.get("train_bpd_mean", metrics.get("train_bpd"))
    if train_bpd is not None:
        parts.append(f"train {train_bpd:.3f}")
    if "test_bpd" in metrics:
        parts.append(f"test {metrics['test_bpd']:.3f} bits/dim (median {metrics['test_bpd_median']:.3f})")
    if "test_accuracy" in metrics:
        parts.append(f"accuracy {metrics['test_accuracy']:.3f}")
    parts.append(f"{metrics['train_images_per_s']:.0f} img/s")
    elapsed, step = metrics["elapsed_s"], metrics["step"]
    left = []
    if max_steps and step:
        left.append(elapsed / step * max(0, max_steps - step))
    if max_minutes:
        left.append(max(0.0, max_minutes * 60 - elapsed))
    parts.append(f"{_clock(elapsed)} elapsed" + (f", ~{_clock(min(left))} left" if left else ""))
    return " | ".join(parts)


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step as the diagnostics see it: the global batch's mean bits/dim, its worst image
    (bits/dim and index in the training set), how many of its images scored above ``OUTLIER_BPD``, and
    the gradient norm before clipping."""

    step: int
    bpd: float
    worst_image_bpd: float
    worst_image: int
    outliers: int
    grad_norm: float


OUTLIER_BPD = 10.0  # an image above this is far outside what a trained model gives any training image


class TrainingWindow:
    """What the steps since the last evaluation did, for metrics.jsonl: the mean batch bits/dim (unsmoothed),
    the worst batch and its step, the worst single image (its bits/dim, training-set index and step), how
    many images scored above ``OUTLIER_BPD``, and the gradient norm before clipping (largest, and how many
    steps were clipped). A single bad image shows here even when the smoothed curve and the test score
    hide it; ``experiments/replay_step.py`` takes its batch apart."""

    def __init__(self) -> None:
        self.steps, self.total = 0, 0.0
        self.worst, self.worst_step = -math.inf, -1
        self.worst_image: StepRecord | None = None
        self.outliers = 0
        self.max_norm, self.clipped = 0.0, 0

    def add(self, record: StepRecord, clip: float) -> None:
        self.steps += 1
        self.total += record.bpd
        if record.bpd > self.worst:
            self.worst, self.worst_step = record.bpd, record.step
        if self.worst_image is None or record.worst_image_bpd > self.worst_image.worst_image_bpd:
            self.worst_image = record
        self.outliers += record.outliers
        self.max_norm = max(self.max_norm, record.grad_norm)
        self.clipped += int(clip > 0 and record.grad_norm > clip)

    def summary(self) -> dict:
        if not self.steps:
            return {}
        return {
            "train_bpd_mean": self.total / self.steps,
            "train_bpd_worst_batch": self.worst,
            "train_worst_step": self.worst_step,
            "train_worst_image_bpd": self.worst_image.worst_image_bpd,
            "train_worst_image": self.worst_image.worst_image,
            "train_worst_image_step": self.worst_image.step,
            "train_images_above_10": self.outliers,
            "grad_norm_max": self.max_norm,
            "clipped_steps": self.clipped,
        }


def _all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


# --------------------------------------------------------------------------- the loop
class Trainer:
    """One training run: the model, its EMA copy, the optimizer, the step counter, and the run directory."""

    def __init__(
        self,
        model_config: GlowConfig,
        config: TrainConfig,
        train_data: Dataset,
        test_data: Dataset | None,
        run_dir: str | Path,
        dist: Distributed | None = None,
        log=None,
    ) -> None:
        self.dist = dist or Distributed()
        if tuple(train_data.image_shape) != model_config.image_shape:
            raise ValueError(
                f"training images are {train_data.image_shape} but the model expects {model_config.image_shape}"
            )
        if model_config.num_classes and train_data.labels is None:
            raise ValueError("a class-conditional model needs a dataset with labels")
        if len(train_data) < config.batch_size:
            raise ValueError(
                f"the training set has {len(train_data)} images, fewer than one batch ({config.batch_size})"
            )
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"--batch-size ({config.batch_size}) must divide by the number of processes ({self.dist.world_size})"
            )
        if config.compile and not self.dist.device.startswith("cuda") and not shutil.which("g++"):
            raise ValueError("--compile on CPU needs a C++ compiler (g++): install one, or pass --no-compile")
        if config.precision == "bfloat16" and self.dist.device.startswith("cuda"):  # "auto" checks this itself
            if not torch.cuda.is_bf16_supported():
                raise ValueError("this GPU cannot compute in bfloat16: use --precision float32")
        self.model_config, self.config = model_config, config
        self.train_data, self.test_data = train_data, test_data
        self.run_dir = Path(run_dir)
        # Lines go above the progress bar (tqdm.write) unless the caller passes its own ``log``.
        self.log = (log or _write) if self.dist.is_main else (lambda *a, **k: None)
        self.device = torch.device(self.dist.device)
        torch.manual_seed(config.seed)
        # "auto" is resolved when the run starts (a resumed run keeps its choice): float32 until then.
        self.model = Glow(model_config, config.compute_config()).to(self.device)
        self.precision = PrecisionChoice(self.model.compute.precision, "not resolved yet")
        self.ema = copy.deepcopy(self.model) if config.ema_decay > 0 else self.model
        self.optimizer = self._make_optimizer()
        self.objective: nn.Module = TrainingObjective(self.model, config.weight_y)
        self.step = 0
        self.bad_steps = 0
        self.rollbacks = 0
        self.lr_scale = 1.0
        self.elapsed_before = 0.0
        self.steps_per_epoch = len(train_data) // config.batch_size
        self.running_bpd: float | None = None
        self.window = TrainingWindow()
        self._order, self._order_epoch = torch.empty(0, dtype=torch.long), -1
        self._pace_start: tuple[int, float] | None = None  # (step, time) the "auto" decay is timed from

    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        save_memory = self.config.memory != "standard"
        return make_optimizer(self.config.optimizer, params, self.config.lr, save_memory)

    # ------------------------------------------------------------- state
    def state(self) -> dict:
        return {
            "model_config": self.model_config.to_dict(),
            "train_config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "bad_steps": self.bad_steps,
            "rollbacks": self.rollbacks,
            "lr_scale": self.lr_scale,
            "elapsed": self.elapsed(),
            "running_bpd": self.running_bpd,
            "precision": self.precision.precision,
            "rng": rng_state(),
        }

    def restore(self, state: dict) -> None:
        if GlowConfig.from_dict(state["model_config"]) != self.model_config:
            raise CheckpointError(
                f"the run in {self.run_dir} was trained with another model config; resume it with the same "
                "preset and flags"
            )
        self.model.load_state_dict(state["model"])
        if self.ema is not self.model:
            self.ema.load_state_dict(state["ema"])
        # The saved groups carry the kernel their run chose; this run's choice (as constructed) holds.
        kernel = {k: v for k, v in self.optimizer.param_groups[0].items() if k in ("fused", "foreach")}
        groups = [{**group, **kernel} for group in state["optimizer"]["param_groups"]]
        self.optimizer.load_state_dict({**state["optimizer"], "param_groups": groups})
        self.step, self.bad_steps = state["step"], state["bad_steps"]
        self.rollbacks, self.lr_scale = state.get("rollbacks", 0), state.get("lr_scale", 1.0)
        self.elapsed_before = state["elapsed"]
        self.running_bpd = state.get("running_bpd")
        set_rng_state(state["rng"])

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self._start

    # ------------------------------------------------------------- pieces of a run
    def initialize(self) -> None:
        """ActNorm init from ``init_images`` training images (all of them if there are fewer); with several
        processes each takes a share of the same images and the statistics are those of their union
        (sums all-reduced, weighted by each share's size), before any DDP wrapping."""
        config, dist = self.config, self.dist
        count = min(config.init_images, len(self.train_data))
        if count < dist.world_size:
            raise ValueError(f"--init-images ({count}) must be at least the number of processes ({dist.world_size})")
        order = torch.randperm(len(self.train_data), generator=step_generator(config.seed, 0, stream=2))
        chosen = order[:count]
        x = dequantize(
            self.train_data.images[chosen], self.model_config.n_bits, generator=step_generator(config.seed, 0, stream=3)
        )
        mine = torch.tensor_split(x, dist.world_size)[dist.rank].to(self.device)
        self.model.initialize(mine, all_reduce_sum=dist.all_reduce_sum if dist.enabled else None)
        if self.ema is not self.model:
            self.ema.load_state_dict(self.model.state_dict())

    def batch(self, step: int) -> tuple[Tensor, Tensor | None]:
        """This process's share of the global batch of ``step``: the same images and noise a single
        process would use for those positions of the batch."""
        config, dist = self.config, self.dist
        epoch, index = divmod(step, self.steps_per_epoch)
        if self._order_epoch != epoch:
            self._order, self._order_epoch = epoch_order(len(self.train_data), config.seed, epoch), epoch
        share = config.batch_size // dist.world_size
        mine = slice(dist.rank * share, (dist.rank + 1) * share)
        indices = self._order[index * config.batch_size : (index + 1) * config.batch_size][mine]
        self.batch_indices = indices
        images = self.train_data.images[indices]  # only this process's share is read (a memory-mapped store)
        # The randomness is drawn for the whole global batch and this share's rows taken from it.
        batch = config.batch_size
        if config.flip:
            images = random_flip(images, step_generator(config.seed, step, stream=4), rows=(mine, batch))
        if config.shift:
            images = random_shift(images, config.shift, step_generator(config.seed, step, stream=6), rows=(mine, batch))
        generator = step_generator(config.seed, step, stream=5)
        noise = torch.rand((batch, *images.shape[1:]), generator=generator, dtype=torch.float32)[mine]
        x = dequantize(images, self.model_config.n_bits, noise=noise)
        y = self.train_data.labels[indices].to(self.device) if self.model_config.num_classes else None
        return x.to(self.device), y

    def train_step(self, loss_fn: nn.Module) -> bool:
        """One optimizer step; returns False (and changes nothing) when the loss or gradient is not finite."""
        x, y = self.batch(self.step)
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step, self.lr_scale)
        loss, per_image = loss_fn(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # always, even when non-finite: other processes wait on the gradient all-reduce
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip or float("inf"))
        # One all-reduce for the diagnostics: the global mean, and each process's worst image in its own slot.
        per_image = per_image.double()
        rank, world = self.dist.rank, self.dist.world_size
        packed = torch.zeros(2 + 2 * world, dtype=torch.float64, device=per_image.device)
        packed[0] = per_image.mean() / world
        packed[1] = (per_image > OUTLIER_BPD).sum()
        worst_bpd, worst_at = per_image.max(0)
        packed[2 + 2 * rank] = worst_bpd
        packed[3 + 2 * rank] = float(self.batch_indices[int(worst_at)])
        packed = self.dist.all_reduce_sum(packed).cpu()
        global_bpd = packed[:1]
        finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(norm)) and bool(torch.isfinite(packed).all())
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.optimizer.step()
        if self.ema is not self.model:
            decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - decay)
        value = global_bpd.item()
        self.running_bpd = value if self.running_bpd is None else 0.98 * self.running_bpd + 0.02 * value
        worst = int(packed[2::2].argmax())
        record = StepRecord(self.step, value, packed[2 + 2 * worst].item(), int(packed[3 + 2 * worst].item()),
                            int(packed[1].item()), float(norm))  # fmt: skip
        self.window.add(record, self.config.grad_clip)
        return True

    def evaluate_and_checkpoint(self, images_per_s: float) -> dict:
        """Test bits/dim, sample grid, model, training state and a metrics line (files from rank 0 only).
        Weights that are not finite are never saved: training rolls back instead."""
        if not _all_finite(self.model):
            self.rollback()
            return {}
        metrics = {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "elapsed_s": round(self.elapsed(), 2),
            "train_bpd": self.running_bpd,
            **self.window.summary(),
            "train_images_per_s": round(images_per_s, 2),
            "bad_steps": self.bad_steps,
            "rollbacks": self.rollbacks,
            "precision": self.precision.precision,
        }
        if self.test_data is not None:
            metrics.update(
                evaluate_bits_per_dim(
                    self.ema, self.test_data, self.config.eval_batch_size, self.config.eval_draws, dist=self.dist
                )
            )
        self.window = TrainingWindow()
        if self.dist.is_main:
            config = self.config
            labels = None
            if self.model_config.num_classes:
                labels = torch.arange(config.samples_per_row, device=self.device) % self.model_config.num_classes
            generator = torch.Generator(device=self.device).manual_seed(config.seed)
            grid = temperature_grid(self.ema, config.temperatures, config.samples_per_row, generator, labels)
            (self.run_dir / "samples").mkdir(exist_ok=True)
            save_grid(grid, self.run_dir / "samples" / f"step_{self.step:08d}.png", config.samples_per_row, scale=2)
            try:
                metrics_path = self.run_dir / "metrics.jsonl"
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                plot_metrics(metrics_path, self.run_dir / "bpd.png")
                save_model(self.ema, self.run_dir / "model", metadata={"step": str(self.step)})
                save_training_state(self.run_dir, self.state(), self.step, config.keep_checkpoints)
            except OSError as error:  # the previous files stay intact: say where training can go on from
                saved = checkpoint_paths(self.run_dir)
                where = f"--resume continues from step {checkpoint_step(saved[-1])}" if saved else "train again"
                raise OSError(f"{first_line(error)}; nothing written before was lost: {where}") from None
        self.dist.barrier()
        return metrics

    def rollback(self) -> None:
        """Back to the newest checkpoint with half the learning rate, after repeated non-finite steps."""
        if self.rollbacks >= 1 or not checkpoint_paths(self.run_dir):
            raise FloatingPointError(
                f"training keeps producing non-finite losses or gradients (step {self.step}"
                f"{', after a rollback' if self.rollbacks else ''}): lower --lr or raise --warmup-steps, "
                "then --resume"
            )
        state = load_training_state(self.run_dir)
        bad_steps, rollbacks = self.bad_steps, self.rollbacks
        self.restore(state)
        self.bad_steps, self.rollbacks, self.lr_scale = bad_steps, rollbacks + 1, self.lr_scale * 0.5
        self.log(f"rolled back to step {self.step} with learning rate x{self.lr_scale}")

    def _prepare_run_dir(self, resume: bool) -> dict:
        """Creates or resumes the run directory; returns the metrics line of the step resumed from, if any.
        Every process checks before any writes (the first file is written after initialization's
        all-reduce, which every process must have reached)."""
        if not resume:
            require_new_run(self.run_dir)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for folder in (self.run_dir, *(self.run_dir / name for name in ("model", "samples", "checkpoints"))):
                for stale in folder.glob(".*.tmp*"):  # a save interrupted by SIGKILL, in any folder training writes
                    stale.unlink(missing_ok=True)
        state = load_training_state(self.run_dir) if resume else None
        self._set_precision(state.get("precision") if state else None)
        if state is None:
            self.initialize()
            if self.dist.is_main:
                text = json.dumps({**self.config.to_dict(), "resolved": self.precision.record()}, indent=2)
                atomic_write(self.run_dir / "train_config.json", lambda p: Path(p).write_text(text))
            return {}
        self.restore(state)
        saved = TrainConfig.from_dict(state["train_config"])
        if self.config.decay_steps == "auto" and isinstance(saved.decay_steps, int):
            self.config = dataclasses.replace(self.config, decay_steps=saved.decay_steps)
            self.log(f"keeping the run's paced schedule: learning rate 0 at step {saved.decay_steps:,}")
        self._check_learning_rate(saved)
        metrics_path = self.run_dir / "metrics.jsonl"
        kept = [m for m in read_metrics(metrics_path) if m["step"] <= self.step] if metrics_path.exists() else []
        self.dist.barrier()  # every process has read the lines before the main one rewrites them
        if self.dist.is_main and metrics_path.exists():  # drop lines written after the checkpoint
            text = "".join(json.dumps(m) + "\n" for m in kept)
            atomic_write(metrics_path, lambda p: Path(p).write_text(text))
        self.log(f"resuming {self.run_dir} from step {self.step}")
        return kept[-1] if kept and kept[-1]["step"] == self.step else {}

    def _pace_schedule(self) -> None:
        """Resolves decay_steps "auto" at the end of warmup, before the decay starts (see TrainConfig): times
        the steps since a fifth of warmup (past torch.compile's first step) or since a resume, and fixes
        the step at which the cosine reaches 0. Every process takes the main process's number."""
        config = self.config
        if self._pace_start is None:
            if self.step >= max(1, config.warmup_steps // 5):
                self._pace_start = (self.step, time.monotonic())
            return
        if self.step < config.warmup_steps:
            return
        first_step, started = self._pace_start
        steps_per_s = (self.step - first_step) / max(time.monotonic() - started, 1e-9)
        seconds_left = max(0.0, config.max_minutes * 60 - self.elapsed())
        eval_images = len(self.test_data) * config.eval_draws if self.test_data is not None else 0
        paced = paced_decay_steps(self.step, steps_per_s, seconds_left, config.eval_every or self.steps_per_epoch,
                                  eval_images, config.batch_size)  # fmt: skip
        mine = torch.tensor([float(paced) if self.dist.is_main else 0.0], dtype=torch.float64, device=self.device)
        decay_steps = int(self.dist.all_reduce_sum(mine).item())
        self.config = dataclasses.replace(config, decay_steps=decay_steps)
        self.log(f"learning rate: cosine decay to 0 at step {decay_steps:,}, paced to --max-minutes "
                 f"({steps_per_s:.2f} steps/s measured, {seconds_left / 60:.1f} min left); "
                 f"--decay-steps {decay_steps} repeats this schedule")  # fmt: skip
        path = self.run_dir / "train_config.json"
        if self.dist.is_main and path.exists():
            values = json.loads(path.read_text())
            values.setdefault("resolved", {})["decay_steps"] = decay_steps
            atomic_write(path, lambda p: Path(p).write_text(json.dumps(values, indent=2)))

    def _check_learning_rate(self, saved: TrainConfig) -> None:
        """Warns when resuming with other options raises the learning rate: a trained model sits in a sharp
        optimum, and a learning rate well above the one it reached there throws it out (measured in
        docs/results.md: the loss rises at once and single images can score thousands of bits/dim)."""
        before = learning_rate(saved, self.step, self.lr_scale)
        after = learning_rate(self.config, self.step, self.lr_scale)
        if after > 2 * before + 1e-3 * self.config.lr:
            self.log(
                f"warning: these options raise the learning rate at step {self.step} from {before:.3g} to "
                f"{after:.3g}; the trained model will lose ground first (keep --lr, --steps and --decay-steps "
                "as they were, or lower --lr)"
            )

    def _set_precision(self, started_with: str | None) -> None:
        """Resolves ``precision`` for this run ("auto": the precision the run started with when resuming,
        else the probe's choice, the same on every process) and sets it on the model and its EMA copy."""
        if self.config.precision == "auto" and started_with is not None:
            choice = PrecisionChoice(started_with, "auto, kept from the run's start")
        else:
            batch = self.config.batch_size // self.dist.world_size
            choice = resolve_precision(self.config.precision, self.model_config, self.device, batch)
            if self.dist.enabled and self.config.precision == "auto":  # one decision for all processes
                votes = self.dist.all_reduce_sum(
                    torch.tensor([float(choice.precision == "bfloat16")], device=self.device)
                )
                agreed = "bfloat16" if votes.item() * 2 > self.dist.world_size else "float32"
                choice = dataclasses.replace(choice, precision=agreed)
        self.precision = choice
        for model in (self.model, self.ema):  # the same model twice without EMA: setting it again is harmless
            model.set_compute(precision=choice.precision)
        self.log(choice.summary())

    def run(self, resume: bool = False, progress: bool = True) -> dict:
        from tqdm import tqdm

        self._start = time.monotonic()
        last = self._prepare_run_dir(resume)
        config = self.config
        loss_fn = self.objective
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            loss_fn = DistributedDataParallel(self.objective, device_ids=device_ids)
        if config.compile:
            loss_fn = torch.compile(loss_fn)
        eval_every = config.eval_every or self.steps_per_epoch
        limits = [s for s in (config.steps, config.epochs and config.epochs * self.steps_per_epoch) if s]
        max_steps = min(limits) if limits else None
        out_of_time = config.max_minutes is not None and self.elapsed() >= config.max_minutes * 60
        if last and ((max_steps is not None and self.step >= max_steps) or out_of_time):
            self.log(f"{self.run_dir} already finished at step {self.step}: nothing to train (raise --steps, "
                     "--epochs or --max-minutes to train on)")  # fmt: skip
            return last

        def evaluate(images_per_s: float) -> dict:
            metrics = self.evaluate_and_checkpoint(images_per_s)
            if metrics:  # empty after a rollback
                self.log(progress_line(metrics, max_steps, config.max_minutes))
            return metrics

        consecutive_bad = 0
        interval_images, interval_start = 0, time.monotonic()
        bar = tqdm(total=max_steps, initial=self.step, disable=not progress or not self.dist.is_main, unit="step",
                   dynamic_ncols=True, mininterval=1.0)  # fmt: skip
        window_images, window_start = 0, time.monotonic()
        with StopRequest() as stop:
            while max_steps is None or self.step < max_steps:
                if config.max_minutes is not None and self.elapsed() >= config.max_minutes * 60:
                    break
                if self._stop_requested(stop):
                    self.log(f"stopping at step {self.step} on a signal; checkpoint saved, continue with --resume")
                    break
                if self.train_step(loss_fn):
                    consecutive_bad = 0
                else:
                    self.bad_steps += 1
                    consecutive_bad += 1
                    if consecutive_bad >= config.max_bad_steps:
                        self.rollback()
                        consecutive_bad = 0
                        continue
                self.step += 1
                if self.config.decay_steps == "auto":
                    self._pace_schedule()
                interval_images += config.batch_size
                window_images += config.batch_size
                bar.update(1)
                now = time.monotonic()
                if now - window_start > 2.0:
                    rate = window_images / (now - window_start)
                    bar.set_postfix(bpd=f"{self.running_bpd or float('nan'):.3f}", img_s=f"{rate:.0f}")
                    window_images, window_start = 0, now
                if self.step % eval_every == 0:
                    last = evaluate(interval_images / (time.monotonic() - interval_start))
                    interval_images, interval_start = 0, time.monotonic()
            bar.close()
            if not last or last["step"] != self.step:
                last = evaluate(interval_images / max(time.monotonic() - interval_start, 1e-9))
        return last

    def _stop_requested(self, stop: StopRequest) -> bool:
        """Whether any process received SIGINT/SIGTERM (agreed by all, so they stop at the same step)."""
        flag = torch.tensor([1.0 if stop.signal is not None else 0.0], device=self.device)
        return bool(self.dist.all_reduce_sum(flag).item() > 0)


def train(
    model_config: GlowConfig,
    config: TrainConfig,
    train_data: Dataset,
    test_data: Dataset | None,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    dist: Distributed | None = None,
    log=None,
) -> dict:
    """Trains a Glow model, writing the run directory described in this module's docstring.

    Returns the last metrics line. SIGINT/SIGTERM end the run after the current step with a checkpoint.
    """
    trainer = Trainer(model_config, config, train_data, test_data, run_dir, dist=dist, log=log)
    return trainer.run(resume=resume, progress=progress)
