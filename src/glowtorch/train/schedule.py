"""The learning rate over a run: linear warmup, then constant or a cosine decay, and the decay paced to a
time budget (``decay_steps="auto"``)."""

from __future__ import annotations

import math
import time

from .config import TrainConfig

__all__ = ["DecayPacer", "learning_rate", "learning_rate_warning", "paced_decay_steps"]


def learning_rate(config: TrainConfig, step: int, scale: float = 1.0) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then constant (reference code) or, with
    ``decay_steps``, a cosine decay to 0 at step ``decay_steps``; times ``scale`` (after rollbacks)."""
    warmup = 1.0 if config.warmup_steps == 0 else min(1.0, (step + 1) / config.warmup_steps)
    decay = 1.0
    if isinstance(config.decay_steps, int):  # "auto" is resolved at the end of warmup, before the decay starts
        progress = (step - config.warmup_steps) / max(1, config.decay_steps - config.warmup_steps)
        decay = 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return config.lr * warmup * decay * scale


def learning_rate_warning(saved: TrainConfig, config: TrainConfig, step: int, scale: float = 1.0) -> str | None:
    """A warning when resuming at ``step`` with ``config`` instead of the run's ``saved`` options raises the
    learning rate: a trained model sits in a sharp optimum, and a learning rate well above the one it
    reached there throws it out (measured in docs/results.md: the loss rises at once and single images can
    score thousands of bits/dim). None when it does not."""
    before = learning_rate(saved, step, scale)
    after = learning_rate(config, step, scale)
    if after <= 2 * before + 1e-3 * config.lr:
        return None
    return (
        f"warning: these options raise the learning rate at step {step} from {before:.3g} to "
        f"{after:.3g}; the trained model will lose ground first (keep --lr, --steps and --decay-steps "
        "as they were, or lower --lr)"
    )


def paced_decay_steps(
    step: int, steps_per_s: float, seconds_left: float, eval_every: int, eval_images: int, batch_size: int
) -> int:
    """The step at which a cosine decay paced to the time budget ends: ``step`` plus the training steps
    expected in ``seconds_left`` at ``steps_per_s``, less the time of the evaluations in between
    (``eval_images`` test images every ``eval_every`` steps, each estimated at a third of the work of
    an image in a training step: a forward pass without the backward). At least one step on."""
    eval_share = eval_images / (3 * batch_size * eval_every) if eval_every else 0.0
    return step + max(1, int(steps_per_s * seconds_left / (1.0 + eval_share)))


def clock() -> float:
    """Seconds on a monotonic clock: what a wall-clock budget and its paced decay are measured with (the one
    place training reads the wall time, so a test can put a clock of its own here; ``cpu_clock`` likewise)."""
    return time.monotonic()


def cpu_clock() -> float:
    """Seconds of CPU time this process has used, over all its threads."""
    return time.process_time()


def now(budget_clock: str) -> float:
    """The time on a ``TrainConfig.budget_clock``: ``clock()`` for "wall", ``cpu_clock()`` for "cpu"."""
    return cpu_clock() if budget_clock == "cpu" else clock()


class DecayPacer:
    """Resolves ``decay_steps="auto"`` (see ``TrainConfig``): times the training steps from a fifth of warmup
    (past torch.compile's first step) or from a resume, and at the end of warmup gives the step at which
    the cosine reaches 0."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.started: tuple[int, float] | None = None  # (step, time) the steps are timed from

    def after_step(
        self, step: int, elapsed_s: float, eval_every: int, eval_images: int
    ) -> tuple[int, float, float] | None:
        """Called after each step with the training time so far: ``(decay_steps, steps_per_s, seconds_left)``
        once warmup is over, else None."""
        config = self.config
        if self.started is None:
            if step >= max(1, config.warmup_steps // 5):
                self.started = (step, now(config.budget_clock))
            return None
        if step < config.warmup_steps:
            return None
        first_step, started = self.started
        steps_per_s = (step - first_step) / max(now(config.budget_clock) - started, 1e-9)
        seconds_left = max(0.0, config.max_minutes * 60 - elapsed_s)
        paced = paced_decay_steps(step, steps_per_s, seconds_left, eval_every, eval_images, config.batch_size)
        return paced, steps_per_s, seconds_left
