"""A training run: ``Trainer`` holds the model, its EMA copy, the optimizer and the counters, and ``run``
is the loop. The parts live beside it: options (``config``), the learning rate (``schedule``), batches
(``batches``), the step's objective, optimizer and EMA (``step``), diagnostics (``diagnostics``) and the
files of the run (``run_dir``, which lists them).

All randomness of a step (data order, dequantization noise, flips) is derived from (seed, step), so
a resumed run sees exactly the data an uninterrupted run would.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import CheckpointError, load_baseline, rng_state, set_rng_state
from ..context import condition_kind
from ..data import Dataset, step_generator
from ..distributed import Distributed
from ..evaluate import evaluate_bits_per_dim
from ..files import first_line
from ..latent import temperature_grid
from ..model import Glow, GlowConfig
from ..precision import PrecisionChoice, check_precision, resolve_precision
from ..preprocess import dequantize
from ..signals import StopRequest
from . import schedule
from .batches import Batch, BatchSource
from .config import TrainConfig
from .diagnostics import ProgressBar, Throughput, TrainingWindow, gather_step_record, progress_line
from .run_dir import RunDir
from .schedule import DecayPacer, learning_rate, learning_rate_warning
from .step import TrainingObjective, make_optimizer, update_ema

__all__ = ["Trainer", "check_run_inputs", "train"]


def _write(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line)


def _all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def check_run_inputs(model_config: GlowConfig, config: TrainConfig, train_data: Dataset, dist: Distributed) -> None:
    """``ValueError`` naming the first thing that keeps this run from starting."""
    if tuple(train_data.image_shape) != model_config.image_shape:
        raise ValueError(
            f"training images are {train_data.image_shape} but the model expects {model_config.image_shape}"
        )
    if model_config.num_classes and train_data.labels is None:
        raise ValueError("a class-conditional model needs a dataset with labels")
    if len(train_data) < config.batch_size:
        raise ValueError(f"the training set has {len(train_data)} images, fewer than one batch ({config.batch_size})")
    if config.batch_size % dist.world_size:
        raise ValueError(
            f"--batch-size ({config.batch_size}) must divide by the number of processes ({dist.world_size})"
        )
    if config.compile and not dist.device.startswith("cuda") and not shutil.which("g++"):
        raise ValueError("--compile on CPU needs a C++ compiler (g++): install one, or pass --no-compile")
    check_precision(config.precision, dist.device)


class Trainer:
    """One training run: the model, its EMA copy, the optimizer, the step counter, and the run folder.

    The public step API (``start``, ``batch``, ``train_step``, ``advance``) is what the loop uses, and what
    experiments use to replay a run's steps exactly (``Trainer.resume_from``).
    """

    def __init__(
        self,
        model_config: GlowConfig,
        config: TrainConfig,
        train_data: Dataset,
        test_data: Dataset | None,
        run_dir: str | Path,
        dist: Distributed | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.dist = dist or Distributed()
        check_run_inputs(model_config, config, train_data, self.dist)
        self.model_config, self.config = model_config, config
        self.train_data, self.test_data = train_data, test_data
        self.run_dir = RunDir(run_dir, self.dist)
        # Lines go above the progress bar (tqdm.write) unless the caller passes its own ``log``.
        self.log = (log or _write) if self.dist.is_main else (lambda *a, **k: None)
        self.device = torch.device(self.dist.device)
        torch.manual_seed(config.seed)
        # "auto" is resolved when the run starts (a resumed run keeps its choice): float32 until then.
        self.model = Glow(model_config, config.compute_config()).to(self.device)
        self.precision = PrecisionChoice(self.model.compute.precision, "not resolved yet")
        self.ema = copy.deepcopy(self.model) if config.ema_decay > 0 else self.model
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(config.optimizer, params, config.lr, save_memory=config.memory != "standard")
        self.objective: nn.Module = TrainingObjective(self.model, config.weight_y)
        if condition_kind(model_config.condition) == "tensor":
            raise ValueError(
                f"a {model_config.condition!r} context comes from your own code: train such a model in your own "
                "loop (loss: -model.log_prob(x, context=c)); glowtorch train makes 'lowres:F' contexts"
            )
        context_of = model_config.context_of if model_config.condition else None
        # checked before anything is written; scored at the first evaluation
        self.baseline = load_baseline(model_config, config.baseline, self.device) if config.baseline else None
        self.baseline_bpd: float | None = None
        self.batches = BatchSource(train_data, config, model_config.n_bits, model_config.num_classes > 0,
                                   self.dist, self.device, context_of)  # fmt: skip
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.step = 0
        self.bad_steps = 0
        self.rollbacks = 0
        self.lr_scale = 1.0
        self.elapsed_before = 0.0
        self.started_at = schedule.now(self.config.budget_clock)
        self.running_bpd: float | None = None
        self.window = TrainingWindow()
        self.pacer = DecayPacer(config) if config.decay_steps == "auto" else None

    @classmethod
    def resume_from(cls, state: dict, config: TrainConfig, train_data: Dataset, log=None) -> Trainer:
        """A trainer holding a checkpoint's ``state`` (its precision too), training with ``config``, with no
        run folder: for replaying a run's steps (``advance``)."""
        trainer = cls(GlowConfig.from_dict(state["model_config"]), config, train_data, None, "unused", log=log)
        trainer.set_precision(state["precision"])
        trainer.restore(state)
        return trainer

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
        """Loads a training state (as ``Trainer.state`` wrote it) into this trainer; a state whose parts do not
        fit this run's model and optimizer is a ``CheckpointError`` in one line."""
        try:
            same = GlowConfig.from_dict(state["model_config"]) == self.model_config
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"the newest checkpoint of {self.run_dir.path} is damaged ({error})") from None
        if not same:
            raise CheckpointError(
                f"the run in {self.run_dir.path} was trained with another model config; resume it with the same "
                "preset and flags"
            )
        try:
            self.model.load_state_dict(state["model"])
            if self.ema is not self.model:
                self.ema.load_state_dict(state["ema"])
            # The saved groups carry the kernel their run chose; this run's choice (as constructed) holds.
            kernel = {k: v for k, v in self.optimizer.param_groups[0].items() if k in ("fused", "foreach")}
            groups = [{**group, **kernel} for group in state["optimizer"]["param_groups"]]
            self.optimizer.load_state_dict({**state["optimizer"], "param_groups": groups})
            set_rng_state(state["rng"])
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError, SyntaxError) as error:
            raise CheckpointError(
                f"the newest checkpoint of {self.run_dir.path} does not fit this run ({first_line(error)[:200]})"
            ) from None
        self.step, self.bad_steps = state["step"], state["bad_steps"]
        self.rollbacks, self.lr_scale = state.get("rollbacks", 0), state.get("lr_scale", 1.0)
        self.elapsed_before = state["elapsed"]
        self.running_bpd = state.get("running_bpd")

    def elapsed(self) -> float:
        """Training time in seconds, over every resumed part of the run."""
        return self.elapsed_before + schedule.now(self.config.budget_clock) - self.started_at

    # ------------------------------------------------------------- starting
    def set_precision(self, started_with: str | None = None) -> None:
        """Resolves ``precision`` for this run ("auto": the precision the run started with when resuming,
        else the probe's choice, the main process's on every process) and sets it on the model and its
        EMA copy."""
        if self.config.precision == "auto" and started_with is not None:
            choice = PrecisionChoice(started_with, "auto, kept from the run's start")
        else:
            batch = self.config.batch_size // self.dist.world_size
            choice = resolve_precision(self.config.precision, self.model_config, self.device, batch)
            if self.config.precision == "auto":  # one decision for all processes
                bfloat16 = self.dist.from_main(float(choice.precision == "bfloat16"))
                choice = dataclasses.replace(choice, precision="bfloat16" if bfloat16 else "float32")
        self.precision = choice
        for model in (self.model, self.ema):  # the same model twice without EMA: setting it again is harmless
            model.set_compute(precision=choice.precision)
        self.log(choice.summary())

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
        images = self.train_data.images[chosen]
        x = dequantize(images, self.model_config.n_bits, generator=step_generator(config.seed, 0, stream=3))
        mine = torch.tensor_split(x, dist.world_size)[dist.rank].to(self.device)
        context = None
        if self.model_config.condition:
            context = torch.tensor_split(self.model_config.context_of(images), dist.world_size)[dist.rank]
            context = context.to(self.device)
        self.model.initialize(mine, all_reduce_sum=dist.all_reduce_sum if dist.enabled else None, context=context)
        if self.ema is not self.model:
            self.ema.load_state_dict(self.model.state_dict())

    def start(self, resume: bool = False) -> dict:
        """Starts the clock and opens the run folder: a new run resolves its precision, initializes ActNorm
        and writes ``train_config.json``; a resumed one restores its newest checkpoint. Returns the metrics
        line of the step resumed from, if any."""
        self.started_at = schedule.now(self.config.budget_clock)
        state = self.run_dir.open(resume, warn=self.log)
        self.set_precision(state.get("precision") if state else None)
        if state is None:
            if resume:  # a run stopped before its first checkpoint starts again: its lines go
                self.run_dir.keep_metrics_until(-1)
            self.initialize()
            self.run_dir.write_config(self.config, self.precision.record())
            return {}
        self.restore(state)
        saved = TrainConfig.from_dict(state["train_config"])
        if self.config.decay_steps == "auto" and isinstance(saved.decay_steps, int):
            self.config = dataclasses.replace(self.config, decay_steps=saved.decay_steps)
            self.pacer = None
            self.log(f"keeping the run's paced schedule: learning rate 0 at step {saved.decay_steps:,}")
        warning = learning_rate_warning(saved, self.config, self.step, self.lr_scale)
        if warning:
            self.log(warning)
        kept = self.run_dir.keep_metrics_until(self.step)
        self.log(f"resuming {self.run_dir.path} from step {self.step}")
        return kept[-1] if kept and kept[-1]["step"] == self.step else {}

    def loss_function(self) -> nn.Module:
        """The objective as the steps compute it: wrapped for DDP with several processes, compiled with
        ``compile`` (``self.model`` stays the unwrapped module that is saved)."""
        loss_fn = self.objective
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            loss_fn = DistributedDataParallel(self.objective, device_ids=device_ids)
        return torch.compile(loss_fn) if self.config.compile else loss_fn

    # ------------------------------------------------------------- steps
    def batch(self, step: int) -> Batch:
        """This process's share of the batch of ``step`` (see ``BatchSource``)."""
        return self.batches(step)

    def train_step(self, loss_fn: nn.Module) -> bool:
        """One optimizer step on the batch of ``self.step``; returns False (and changes nothing) when the loss
        or gradient is not finite on any process. Does not advance ``self.step``."""
        x, y, indices, context, noise = self.batch(self.step)
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step, self.lr_scale)
        loss, per_image = loss_fn(x, y, context, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # always, even when non-finite: other processes wait on the gradient all-reduce
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip or float("inf"))
        record = gather_step_record(self.step, per_image, indices, norm, self.dist)
        if record is None or not (bool(torch.isfinite(loss)) and bool(torch.isfinite(norm))):
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.optimizer.step()
        if self.ema is not self.model:
            update_ema(self.ema, self.model, self.step, self.config.ema_decay)
        previous = self.running_bpd
        self.running_bpd = record.bpd if previous is None else 0.98 * previous + 0.02 * record.bpd
        self.window.add(record, self.config.grad_clip)
        return True

    def advance(self, loss_fn: nn.Module, until: int) -> None:
        """Steps on to step ``until`` as the loop does (a non-finite step changes nothing and is counted),
        without evaluations, rollbacks or the paced schedule."""
        while self.step < until:
            if not self.train_step(loss_fn):
                self.bad_steps += 1
            self.step += 1

    def pace_schedule(self) -> None:
        """After a step of a ``decay_steps="auto"`` run: fixes the decay once warmup is over (``DecayPacer``),
        the main process's number on every process, and records it in ``train_config.json``. The decay ends at
        the first of the two limits: the step the time budget is expected to reach, or ``steps``/``epochs``."""
        eval_images = len(self.test_data) * self.config.eval_draws if self.test_data is not None else 0
        eval_every = self.config.eval_interval(self.steps_per_epoch)
        paced = self.pacer.after_step(self.step, self.elapsed(), eval_every, eval_images)
        if paced is None:
            return
        decay_steps = int(self.dist.from_main(paced[0]))
        step_limit = self.config.step_limit(self.steps_per_epoch)
        by = "paced to --max-minutes"
        if step_limit is not None and step_limit < decay_steps:  # --steps or --epochs ends the run first
            decay_steps, by = step_limit, f"at the run's last step (--max-minutes would allow {decay_steps:,})"
        self.config = dataclasses.replace(self.config, decay_steps=decay_steps)
        self.pacer = None
        self.log(f"learning rate: cosine decay to 0 at step {decay_steps:,}, {by} "
                 f"({paced[1]:.2f} steps/s measured, {paced[2] / 60:.1f} min left); "
                 f"--decay-steps {decay_steps} repeats this schedule")  # fmt: skip
        self.run_dir.resolve(decay_steps=decay_steps)

    # ------------------------------------------------------------- evaluations
    def evaluate_and_checkpoint(self, images_per_s: float) -> dict:
        """Test bits/dim, sample grid, model, training state and a metrics line (files from rank 0 only).
        Weights that are not finite are never saved: training rolls back instead."""
        if not _all_finite(self.model):
            self.rollback()
            return {}
        config = self.config
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
                    self.ema, self.test_data, config.eval_batch_size, config.eval_draws, dist=self.dist
                )
            )
            if self.baseline is not None:
                if self.baseline_bpd is None:  # the same images and noise as test_bpd
                    self.baseline_bpd = evaluate_bits_per_dim(
                        self.baseline, self.test_data, config.eval_batch_size, config.eval_draws, dist=self.dist
                    )["test_bpd"]
                metrics["baseline_bpd"] = self.baseline_bpd
        self.window = TrainingWindow()
        if self.dist.is_main:
            labels = None
            if self.model_config.num_classes:
                labels = torch.arange(config.samples_per_row, device=self.device) % self.model_config.num_classes
            generator = torch.Generator(device=self.device).manual_seed(config.seed)
            context = None
            if self.model_config.condition:  # each column the context of one test (or training) image
                source = self.test_data if self.test_data is not None else self.train_data
                context = self.model_config.context_of(source.images[: config.samples_per_row])
                context = context.to(self.device).repeat(-(-config.samples_per_row // len(context)), 1, 1, 1)
                context = context[: config.samples_per_row]
            grid = temperature_grid(self.ema, config.temperatures, config.samples_per_row, generator, labels,
                                    context=context)  # fmt: skip
            self.run_dir.save(self.step, metrics, grid, config.samples_per_row, self.ema, self.state(),
                              config.keep_checkpoints)  # fmt: skip
        self.dist.barrier()
        return metrics

    def rollback(self) -> None:
        """Back to the newest checkpoint with half the learning rate, after repeated non-finite steps."""
        if self.rollbacks >= 1 or not self.run_dir.has_checkpoint():
            raise FloatingPointError(
                f"training keeps producing non-finite losses or gradients (step {self.step}"
                f"{', after a rollback' if self.rollbacks else ''}): lower --lr or raise --warmup-steps, "
                "then --resume"
            )
        bad_steps, rollbacks = self.bad_steps, self.rollbacks
        self.restore(self.run_dir.load_state())
        self.bad_steps, self.rollbacks, self.lr_scale = bad_steps, rollbacks + 1, self.lr_scale * 0.5
        self.log(f"rolled back to step {self.step} with learning rate x{self.lr_scale}")

    # ------------------------------------------------------------- the loop
    def run(self, resume: bool = False, progress: bool = True) -> dict:
        """Trains until ``steps``, ``epochs`` or ``max_minutes`` or a stop signal, evaluating and saving every
        ``eval_every`` steps and at the end. Returns the last metrics line."""
        last = self.start(resume)
        config = self.config
        loss_fn = self.loss_function()
        max_steps = config.step_limit(self.steps_per_epoch)
        eval_every = config.eval_interval(self.steps_per_epoch)
        if last and ((max_steps is not None and self.step >= max_steps) or config.out_of_time(self.elapsed())):
            self.log(f"{self.run_dir.path} already finished at step {self.step}: nothing to train (raise --steps, "
                     "--epochs or --max-minutes to train on)")  # fmt: skip
            return last
        meter = Throughput()
        bar = ProgressBar(max_steps, self.step, enabled=progress and self.dist.is_main)
        consecutive_bad = 0
        with StopRequest() as stop:
            while max_steps is None or self.step < max_steps:
                # every process reads its own clock: the budget ends the run where any process finds it used up,
                # so all stop at the same step (one that trained on would wait forever in its next all-reduce)
                signalled, out_of_time = self.dist.any_each(
                    stop.signal is not None, config.out_of_time(self.elapsed()), device=self.device
                )
                if signalled:
                    self.log(f"stopping at step {self.step} on a signal; checkpoint saved, continue with --resume")
                    break
                if out_of_time:
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
                if self.pacer is not None:
                    self.pace_schedule()
                meter.add(config.batch_size)
                bar.update(config.batch_size, self.running_bpd)
                if self.step % eval_every == 0:
                    last = self._evaluate(meter.rate(), max_steps)
                    meter.restart()
            bar.close()
            if not last or last["step"] != self.step:
                last = self._evaluate(meter.rate(), max_steps)
        return last

    def _evaluate(self, images_per_s: float, max_steps: int | None) -> dict:
        metrics = self.evaluate_and_checkpoint(images_per_s)
        if metrics:  # empty after a rollback
            self.log(progress_line(metrics, max_steps, self.config.max_minutes))
        return metrics


def train(
    model_config: GlowConfig,
    config: TrainConfig,
    train_data: Dataset,
    test_data: Dataset | None,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    dist: Distributed | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Trains a Glow model, writing the run folder described in ``glowtorch.train.run_dir``.

    Returns the last metrics line. SIGINT/SIGTERM end the run after the current step with a checkpoint.
    """
    trainer = Trainer(model_config, config, train_data, test_data, run_dir, dist=dist, log=log)
    return trainer.run(resume=resume, progress=progress)
