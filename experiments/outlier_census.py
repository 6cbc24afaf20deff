"""How often does a training model find a training image extremely unlikely? One census per checkpoint.

Scores ``--images`` training images, each with its own random translation (as training draws them, up to
``--shift`` pixels) and dequantization noise, under the *training* weights of each checkpoint (not the
EMA copy: these are the weights the training loss sees), and counts the images above 10 and 100
bits/dim. One such image in a batch of 32 is what moves that batch's mean by several bits/dim.

::

    python experiments/outlier_census.py ../runs/mnist-u2/checkpoints/step_*.pt --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from glowtorch.checkpoint import checkpoint_step
from glowtorch.data import load_dataset, random_shift
from glowtorch.likelihood import nll_bits_per_dim
from glowtorch.model import Glow, GlowConfig
from glowtorch.preprocess import dequantize
from glowtorch.train import TrainConfig, learning_rate


@torch.no_grad()
def census(model: Glow, images: torch.Tensor, shift: int, seed: int, batch_size: int = 500) -> dict:
    """Per-image bits/dim of ``images`` under one translation and noise draw each (fixed by ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for start in range(0, len(images), batch_size):
        part = random_shift(images[start : start + batch_size], shift, generator) if shift else images[start:]
        x = dequantize(part[:batch_size], model.config.n_bits, generator=generator)
        scores.append(nll_bits_per_dim(model.log_prob(x), model.config.num_dims, model.config.n_bits))
    bpd = torch.cat(scores).double()
    return {
        "mean": bpd.mean().item(),
        "median": bpd.median().item(),
        "max": bpd.max().item(),
        "worst_position": int(bpd.argmax()),
        "above_10": int((bpd > 10).sum()),
        "above_100": int((bpd > 100).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data-dir")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--shift", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = load_dataset("mnist", args.data_dir, train=True)
    chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[: args.images]
    images = data.images[chosen]
    for path in args.checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = Glow(GlowConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
        model.eval()
        step = checkpoint_step(path)
        config = TrainConfig.from_dict(state["train_config"])
        result = census(model, images, args.shift, args.seed)
        result["worst_train_index"] = int(chosen[result.pop("worst_position")])
        print(json.dumps({"step": step, "lr": learning_rate(config, step), **result}), flush=True)


if __name__ == "__main__":
    main()
