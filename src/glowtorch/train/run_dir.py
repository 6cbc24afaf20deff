"""The run folder: every file a training run writes, and reading them back on ``--resume``.

::

    train_config.json            the training options as given (TrainConfig) and, under "resolved", the
                                 values the run settled at run time (precision, a paced decay_steps)
    metrics.jsonl                one JSON line per evaluation
    bpd.png                      train and test bits/dim against step and wall time
    samples/step_XXXXXXXX.png    sample grids, one row per temperature
    model/                       config.json + model.safetensors (EMA weights): the shareable model
    checkpoints/step_XXXXXXXX.pt training state for --resume (loaded with weights_only=True)

Only the main process writes; every process reads.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from ..checkpoint import (
    CheckpointError,
    checkpoint_paths,
    checkpoint_step,
    holds_run,
    load_training_state,
    require_new_run,
    save_model,
    save_training_state,
)
from ..distributed import Distributed
from ..files import append_line, atomic_write, first_line, remove_stale_temps
from ..images import save_grid
from ..model import Glow
from ..plots import plot_metrics, read_metrics
from .config import TrainConfig

__all__ = ["RunDir"]

CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
FOLDERS = ("model", "samples", "checkpoints")


class RunDir:
    """A run folder at ``path``, seen from one process of the job."""

    def __init__(self, path: str | Path, dist: Distributed | None = None) -> None:
        self.path = Path(path)
        self.dist = dist or Distributed()
        self.options: TrainConfig | None = None
        self.resolved: dict = {}

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def open(self, resume: bool, warn=None) -> dict | None:
        """Makes the folder ready: a new run refuses a folder that holds one, and temporaries of a save that
        was killed are removed. Returns the newest training state when resuming (None for a new run, and for
        a run stopped before its first checkpoint, which starts again; ``warn`` is told so, and of damaged
        checkpoints skipped).
        Every process checks before any writes (the first file is written after initialization's
        all-reduce, which every process must have reached)."""
        if not resume:
            require_new_run(self.path)
        if self.dist.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            for folder in (self.path, *(self.path / name for name in FOLDERS)):
                if folder.is_dir():  # a save interrupted by SIGKILL leaves glowtorch's own temporaries
                    remove_stale_temps(folder)
        if not resume:
            return None
        if not checkpoint_paths(self.path) and holds_run(self.path):
            if (self.path / "model").exists():  # a model to keep (its checkpoints deleted, or never written)
                raise CheckpointError(
                    f"{self.path} holds a model but no checkpoint to resume from: train into another --out "
                    "(its model/ stays as it is)"
                )
            if warn is not None:
                warn(f"{self.path} holds no checkpoint yet (the run stopped before its first): starting it again")
            return None
        if (self.path / CONFIG_FILE).is_file():
            self.options, self.resolved = self.read_config()
        return load_training_state(self.path, warn=warn)

    # ----------------------------------------------------------------- train_config.json
    def write_config(self, options: TrainConfig, resolved: dict) -> None:
        """Writes ``train_config.json``: the options as given and the values resolved so far."""
        self.options, self.resolved = options, dict(resolved)
        self._write_config()

    def resolve(self, **values) -> None:
        """Adds values the run settled (e.g. ``decay_steps``) to ``train_config.json``'s ``resolved`` record."""
        self.resolved.update(values)
        if self.options is not None:
            self._write_config()

    def _write_config(self) -> None:
        if self.dist.is_main:
            text = json.dumps({**self.options.to_dict(), "resolved": self.resolved}, indent=2)
            atomic_write(self.path / CONFIG_FILE, lambda p: Path(p).write_text(text))

    def read_config(self) -> tuple[TrainConfig, dict]:
        """The options of ``train_config.json`` and its ``resolved`` record."""
        values = json.loads((self.path / CONFIG_FILE).read_text())
        return TrainConfig.from_dict(values), dict(values.get("resolved", {}))

    # ----------------------------------------------------------------- metrics.jsonl
    def keep_metrics_until(self, step: int) -> list[dict]:
        """Drops the metrics lines written after ``step`` (a resumed checkpoint's); returns those kept."""
        path = self.metrics_path
        kept = [m for m in read_metrics(path) if m["step"] <= step] if path.exists() else []
        self.dist.barrier()  # every process has read the lines before the main one rewrites them
        if self.dist.is_main and path.exists():
            text = "".join(json.dumps(m) + "\n" for m in kept)
            atomic_write(path, lambda p: Path(p).write_text(text))
        return kept

    # ----------------------------------------------------------------- an evaluation's files
    def save(self, step: int, metrics: dict, grid: Tensor, columns: int, ema: Glow, state: dict, keep: int) -> None:
        """Writes an evaluation's files (main process only): the sample grid, the metrics line, the plot, the
        model and the training state. A write that fails leaves the files written before intact and
        says where training can go on from."""
        if not self.dist.is_main:
            return
        try:
            (self.path / "samples").mkdir(exist_ok=True)
            save_grid(grid, self.path / "samples" / f"step_{step:08d}.png", columns, scale=2)
            append_line(self.metrics_path, json.dumps(metrics))
            plot_metrics(self.metrics_path, self.path / "bpd.png")
            save_model(ema, self.path / "model", metadata={"step": str(step)})
            save_training_state(self.path, state, step, keep)
        except OSError as error:
            saved = checkpoint_paths(self.path)
            if saved:
                where = f"--resume continues from step {checkpoint_step(saved[-1])}"
            elif (self.path / "model").exists():
                where = "no checkpoint yet: train again into another --out"
            else:
                where = "no checkpoint yet: --resume starts the run again"
            raise OSError(f"{first_line(error)}; nothing written before was lost: {where}") from None

    def has_checkpoint(self) -> bool:
        return bool(checkpoint_paths(self.path))

    def load_state(self) -> dict:
        """The newest readable training state."""
        return load_training_state(self.path)
