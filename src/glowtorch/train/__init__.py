"""Training: ``train`` (or a ``Trainer``) runs the loop over a ``TrainConfig``; the modules of this
package each hold one part of it (see ``glowtorch.train.loop``)."""

from ..class_prior import fit_class_prior
from .batches import Batch, BatchSource
from .config import PACE_MIN_WARMUP, TrainConfig, steps_or_auto
from .diagnostics import OUTLIER_BPD, StepRecord, TrainingWindow, progress_line
from .loop import Trainer, train
from .run_dir import RunDir
from .schedule import learning_rate, paced_decay_steps
from .step import TrainingObjective, make_optimizer, optimizer_kernel

__all__ = [
    "OUTLIER_BPD",
    "PACE_MIN_WARMUP",
    "Batch",
    "BatchSource",
    "RunDir",
    "StepRecord",
    "TrainConfig",
    "Trainer",
    "TrainingObjective",
    "TrainingWindow",
    "fit_class_prior",
    "learning_rate",
    "make_optimizer",
    "optimizer_kernel",
    "paced_decay_steps",
    "progress_line",
    "steps_or_auto",
    "train",
]
