"""Why was one training batch bad? Replays a run exactly up to ``--step`` and takes that batch apart.

A metrics line names the window's worst batch (``train_bpd_worst_batch`` at ``train_worst_step``). This
loads the run's newest checkpoint at or before that step (with the training options of its newest
checkpoint, which a resume may have changed), trains on from it exactly as the run did
(same batches, noise, learning rate and compiled loss: the bitwise resume), and then, for the batch of
``--step`` under the weights the run had at that moment:

- the batch mean, which must equal the logged value (so the replay is the run);
- every image's bits/dim, the worst ones with their training-set index;
- where the worst image's cost sits: each layer type's log-determinant and each prior's density, in
  bits/dim, beside the batch's median image; and the latent that its prior finds least likely
  (its distance from the predicted mean in predicted standard deviations, and that standard deviation);
- the worst image under 32 other dequantization draws, and without the batch's translation.

::

    python experiments/replay_step.py ../runs/mnist-u2 --step 14321 --dataset mnist \
        --data-dir ../shared/data/mnist [--json report.json] [--png worst.png]

Replaying the run needs the thread count it trained with (CPU convolutions round differently with
another count); ``--threads`` sets it (default: PyTorch's).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor

from glowtorch.checkpoint import checkpoint_paths, checkpoint_step
from glowtorch.data import load_dataset
from glowtorch.images import save_grid
from glowtorch.layers import gaussian_log_prob
from glowtorch.likelihood import nll_bits_per_dim
from glowtorch.model import Glow, GlowConfig
from glowtorch.preprocess import dequantize, to_uint8
from glowtorch.train import TrainConfig, Trainer


def decompose(model: Glow, x: Tensor, y: Tensor | None = None) -> dict:
    """Where one image's cost sits, in bits/dim (positive = cost): ``x`` ``(1, C, H, W)``.

    Returns ``{"total", "layers": {kind: bits/dim}, "priors": {name: bits/dim}, "least_likely": {...}}``;
    ``total`` is the image's bits/dim (the parts plus the quantization constant ``n_bits``).
    """
    config = model.config
    scale = -1.0 / (config.num_dims * math.log(2.0))  # nats of log-density -> bits/dim of cost
    layers: dict[str, float] = {}
    priors: dict[str, float] = {}
    worst = {"sigmas": 0.0}

    def prior(name: str, z: Tensor, mean: Tensor, log_std: Tensor) -> None:
        priors[name] = scale * float(gaussian_log_prob(z, mean, log_std))
        sigmas = ((z - mean) / log_std.exp()).abs()
        index = int(sigmas.argmax())
        if float(sigmas.flatten()[index]) > worst["sigmas"]:
            position = list(torch.unravel_index(torch.tensor(index), sigmas.shape[1:]))
            worst.update(
                prior=name,
                position=[int(p) for p in position],
                sigmas=float(sigmas.flatten()[index]),
                std=float(log_std.exp().broadcast_to(sigmas.shape).flatten()[index]),
                distance=float((z - mean).abs().flatten()[index]),
            )

    with torch.no_grad():
        h = x
        for level, steps in enumerate(model.levels):
            h, _ = model.squeeze(h)
            for step in steps.layers:
                for layer in step.layers:
                    h, logdet = layer(h)
                    kind = type(layer).__name__
                    layers[kind] = layers.get(kind, 0.0) + scale * float(logdet)
            if level < len(model.splits):
                split = model.splits[level]
                h, z = split.split(h)
                prior(f"split {level + 1}", z, *split.prior(h))
        prior("top", h, *model.top_prior_params(1, y))
    total = sum(layers.values()) + sum(priors.values()) + config.n_bits
    return {"total": total, "layers": layers, "priors": priors, "least_likely": worst}


def resume_trainer(state: dict, config: TrainConfig, train_data) -> tuple[Trainer, torch.nn.Module]:
    """A Trainer holding a checkpoint's ``state``, training with ``config``, and the loss the run used
    (compiled when the run compiled it, so the replayed steps round as the run's did)."""
    trainer = Trainer.resume_from(state, config, train_data)
    return trainer, trainer.loss_function()


def replay(run: Path, step: int, dataset: str, data_dir: str | None) -> tuple[Trainer, dict]:
    """A Trainer holding the run's state just before ``step``'s update, and the checkpoint's metadata."""
    paths = [p for p in checkpoint_paths(run) if checkpoint_step(p) <= step]
    if not paths:
        raise SystemExit(f"{run} has no checkpoint at or before step {step} (kept: the newest few)")
    state = torch.load(paths[-1], map_location="cpu", weights_only=True)
    model_config = GlowConfig.from_dict(state["model_config"])
    # The options the run trained on with: its newest checkpoint's (a resume may have changed the schedule).
    newest = torch.load(checkpoint_paths(run)[-1], map_location="cpu", weights_only=True)
    config = TrainConfig.from_dict(newest["train_config"])
    train_data = load_dataset(dataset, data_dir, train=True, image_size=model_config.image_shape[-1],
                              channels=model_config.image_shape[0])  # fmt: skip
    trainer, loss_fn = resume_trainer(state, config, train_data)
    start = trainer.step
    trainer.advance(loss_fn, step)
    return trainer, {"checkpoint": paths[-1].name, "replayed_steps": step - start, "compiled_loss": loss_fn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--step", type=int, required=True)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)
    parser.add_argument("--save", type=Path, help="also save the training weights of that moment (.pt)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.monotonic()
    trainer, info = replay(args.run, args.step, args.dataset, args.data_dir)
    model = trainer.model
    model.eval()
    if args.save:
        torch.save(model.state_dict(), args.save)
    x, y, indices, _, _ = trainer.batch(args.step)
    _, per_image = info.pop("compiled_loss")(x, y)  # with the graph the run ran
    batch_bpd = per_image.double().mean()  # what Trainer.train_step logs for one process
    with torch.no_grad():
        bpd = nll_bits_per_dim(model.log_prob(x, y), model.config.num_dims, model.config.n_bits)
    order = torch.argsort(bpd, descending=True)
    worst, median = int(order[0]), int(order[len(order) // 2])

    double = Glow(model.config).double()
    double.load_state_dict(model.state_dict())
    double.eval()
    label = lambda i: None if y is None else y[i : i + 1]  # noqa: E731
    report = {
        "run": str(args.run),
        "step": args.step,
        **info,
        "batch_bpd": batch_bpd.item(),
        "per_image_top5": [
            {"position": int(i), "train_index": int(indices[i]), "bpd": float(bpd[i])} for i in order[:5]
        ],
        "batch_median_bpd": float(bpd.median()),
        "batch_mean_without_worst": float(bpd[order[1:]].mean()),
        "worst": decompose(double, x[worst : worst + 1].double(), label(worst)),
        "median": decompose(double, x[median : median + 1].double(), label(median)),
    }
    # The worst image's own pixels, with other noise and without the batch's translation.
    images = trainer.train_data.images
    shifted = to_uint8(x[worst : worst + 1], model.config.n_bits)[0]  # the pixels under the noise
    original = images[int(indices[worst])]
    report["worst"]["translated"] = not torch.equal(shifted, original)
    generator = torch.Generator().manual_seed(0)
    for name, pixels in (("this_translation", shifted), ("untranslated", original)):
        batch = pixels[None].expand(args.draws, *pixels.shape)
        noisy = dequantize(batch, model.config.n_bits, generator=generator).double()
        ys = None if y is None else y[worst].expand(args.draws)
        with torch.no_grad():
            scores = nll_bits_per_dim(double.log_prob(noisy, ys), model.config.num_dims, model.config.n_bits)
        report["worst"][f"{name}_{args.draws}_draws"] = {
            "min": float(scores.min()),
            "median": float(scores.median()),
            "max": float(scores.max()),
            "above_10": int((scores > 10).sum()),
        }
    report["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if args.png:
        save_grid(torch.stack([original, shifted]), args.png, columns=2, scale=4)


if __name__ == "__main__":
    main()
