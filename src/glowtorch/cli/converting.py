"""``glowtorch convert``: a checkpoint of another Glow implementation as a glowtorch model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import Shared, positive_int

__all__ = ["add_convert"]


def add_convert(sub: argparse._SubParsersAction, shared: Shared) -> None:
    c = sub.add_parser("convert", help="a checkpoint of another Glow port as a glowtorch model folder",
                       description="Reads the port's checkpoint, checks it against the architecture its tensors "
                       "describe, and writes config.json + model.safetensors computing the same log p(x).")  # fmt: skip
    c.add_argument("port", choices=["rosinality"], help="rosinality: rosinality/glow-pytorch")
    c.add_argument("checkpoint", help="the port's checkpoint file (a state_dict saved with torch.save)")
    c.add_argument("--out", "-o", required=True, help="folder for the model (config.json + model.safetensors)")
    c.add_argument(
        "--image-size",
        type=positive_int,
        required=True,
        help="the images' height and width (the checkpoint does not say: the model is convolutional)",
    )
    c.add_argument(
        "--n-bits",
        type=int,
        choices=range(1, 9),
        metavar="1..8",
        required=True,
        help="bits per pixel the model was trained on (rosinality's train.py: --n_bits, default 5)",
    )
    c.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from ..checkpoint import require_new_model_dir, save_model
    from ..convert import from_rosinality, load_port_checkpoint
    from ..files import ensure_writable_dir

    out = require_new_model_dir(args.out)
    state = load_port_checkpoint(args.checkpoint)
    model = from_rosinality(state, args.image_size, args.n_bits)
    ensure_writable_dir(out)
    save_model(model, out, metadata={"converted_from": f"{args.port}:{Path(args.checkpoint).name}"})
    c = model.config
    print(f"converted {args.checkpoint} ({args.port}): L={c.levels} K={c.depth} width={c.hidden_channels} "
          f"{c.coupling} {c.permutation}, {c.image_shape} images at {c.n_bits} bits -> {out}")  # fmt: skip
    return 0
