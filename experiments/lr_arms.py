"""Does a trained model's training step find extreme images more often at a higher learning rate?

From one checkpoint of a run, trains ``--steps`` steps once per ``--lr`` (constant, no warm-up), on
the run's own batches (the same images, translations and noise for every arm), and records for each
step the batch's mean bits/dim and its worst single image (``glowtorch.train.StepRecord``). Prints,
per arm, the mean, the quantiles of the per-step worst image, and how many steps had an image above
3, 5, 10 and 100 bits/dim; ``--json`` keeps every step.

::

    python experiments/lr_arms.py ../runs/mnist-u2/checkpoints/step_00012000.pt --data-dir DIR \
        --lr 0.0015 --lr 0.0005 --steps 1500
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from glowtorch.data import load_dataset
from glowtorch.train import StepRecord, TrainConfig, TrainingWindow
from replay_step import resume_trainer  # experiments/ is on the path when run as a script


class Recorder(TrainingWindow):
    """A TrainingWindow that also keeps every step's record."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[StepRecord] = []

    def add(self, record: StepRecord, clip: float) -> None:
        super().add(record, clip)
        self.records.append(record)


def arm(state: dict, lr: float, steps: int, data, threads: int) -> list[StepRecord]:
    torch.set_num_threads(threads)
    config = dataclasses.replace(TrainConfig.from_dict(state["train_config"]), lr=lr, warmup_steps=0, decay_steps=None)
    trainer, loss_fn = resume_trainer(state, config, data)
    trainer.window = Recorder()
    trainer.advance(loss_fn, trainer.step + steps)
    return trainer.window.records


def summary(records: list[StepRecord]) -> dict:
    worst = torch.tensor([r.worst_image_bpd for r in records], dtype=torch.float64)
    quantiles = torch.quantile(worst, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
    return {
        "steps": len(records),
        "mean_bpd": sum(r.bpd for r in records) / len(records),
        "last_500_mean_bpd": sum(r.bpd for r in records[-500:]) / len(records[-500:]),
        "worst_image_median": quantiles[0],
        "worst_image_p90": quantiles[1],
        "worst_image_p99": quantiles[2],
        "worst_image_max": worst.max().item(),
        **{f"steps_with_an_image_above_{t}": int((worst > t).sum()) for t in (3, 5, 10, 100)},
        "grad_norm_median": float(torch.tensor([r.grad_norm for r in records]).median()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir")
    parser.add_argument("--lr", type=float, action="append", required=True)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    data = load_dataset("mnist", args.data_dir, train=True)
    results = {}
    for lr in args.lr:
        started = time.monotonic()
        records = arm(state, lr, args.steps, data, args.threads)
        results[lr] = {"summary": summary(records), "records": [dataclasses.asdict(r) for r in records]}
        print(json.dumps({"lr": lr, **results[lr]["summary"], "seconds": round(time.monotonic() - started)}))
    if args.json:
        args.json.write_text(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
