"""Training options: ``TrainConfig``, the frozen dataclass the ``glowtorch train`` flags are derived from."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..config import ComputeConfig
from ..memory import MEMORY_MODES
from ..precision import PRECISION_CHOICES
from ..validation import dataclass_from_dict

__all__ = ["PACE_MIN_WARMUP", "TrainConfig", "steps_or_auto"]


BUDGET_CLOCKS = ("wall", "cpu")
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
            fixes decay_steps to the step it expects to reach when max_minutes is up, or to steps (epochs)
            when that comes first (logged, and kept on --resume), so the learning rate reaches 0 at the end
            on a slow machine or a fast one.
        grad_clip: maximum gradient norm (0 disables clipping).
        ema_decay: Polyak averaging of the weights used for evaluation and sampling (0 disables).
        init_images: training images used for ActNorm's data-dependent initialization.
        weight_y: weight of the class-prediction loss (bits per image) of conditional models.
        flip: random horizontal flips of training images.
        shift: random translation of training images by up to this many whole pixels on each axis
            (zero-filled); 0 disables it. The test split is never augmented.
        perturb: replace each training pixel by a uniformly random value with this probability (0 disables
            it): the background model of the likelihood-ratio OOD score (Ren et al. 2019 use 0.1 to 0.2).
        epochs: stop after this many passes over the training set.
        steps: stop after this many optimizer steps.
        max_minutes: stop after this much training time. Training stops at whichever of epochs,
            steps and max_minutes comes first; at least one must be set.
        budget_clock: what max_minutes, the paced decay and the metrics' elapsed_s count: "wall" (wall-clock
            time) or "cpu" (this process's CPU time over all its threads, which other work on the machine
            does not use up: equal CPU budgets for runs that share a machine).
        eval_every: steps between evaluations and checkpoints; 0 means once per epoch.
        eval_batch_size: images per batch when evaluating (does not change the result).
        eval_draws: dequantization draws averaged for test bits/dim.
        baseline: models conditioned on a context: an unconditional model of the same images (a folder or
            pretrained:NAME), scored once on the test split with the same noise; each metrics line has its
            bits/dim as ``baseline_bpd`` beside the conditional ``test_bpd``.
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
    perturb: float = 0.0
    epochs: int | None = None
    steps: int | None = None
    max_minutes: float | None = None
    budget_clock: str = field(default="wall", metadata={"choices": BUDGET_CLOCKS})
    eval_every: int = 0
    eval_batch_size: int = 500
    eval_draws: int = 1
    baseline: str | None = None
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
            (0.0 <= self.perturb < 1.0, "perturb must be in [0, 1)"),
            (self.epochs is None or self.epochs >= 1, "epochs must be >= 1"),
            (self.steps is None or self.steps >= 1, "steps must be >= 1"),
            (self.max_minutes is None or self.max_minutes > 0, "max_minutes must be > 0"),
            (self.budget_clock in BUDGET_CLOCKS, f"budget_clock must be one of {', '.join(BUDGET_CLOCKS)}"),
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

    def step_limit(self, steps_per_epoch: int) -> int | None:
        """The step training stops at by ``steps`` and ``epochs`` (the first of the two), or None."""
        limits = [s for s in (self.steps, self.epochs and self.epochs * steps_per_epoch) if s]
        return min(limits) if limits else None

    def eval_interval(self, steps_per_epoch: int) -> int:
        """Steps between evaluations: ``eval_every``, or one epoch."""
        return self.eval_every or steps_per_epoch

    def out_of_time(self, elapsed_s: float) -> bool:
        """Whether ``max_minutes`` of training time are used up after ``elapsed_s`` seconds."""
        return self.max_minutes is not None and elapsed_s >= self.max_minutes * 60

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """The options of ``to_dict``, or of a run's ``train_config.json`` (whose ``resolved`` record, the
        values a run settled at run time, is not an option and is left out: ``RunDir.read_config`` has it)."""
        values = {k: v for k, v in values.items() if k != "resolved"}
        return dataclass_from_dict(cls, values, "training options")
