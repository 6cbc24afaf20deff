"""``glowtorch convert``: a checkpoint of another Glow implementation as a glowtorch model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import Shared, UsageError, int_up_to

__all__ = ["add_convert"]


def add_convert(sub: argparse._SubParsersAction, shared: Shared) -> None:
    c = sub.add_parser("convert", help="a checkpoint of another Glow port as a glowtorch model folder",
                       description="Reads the port's checkpoint, checks it against the architecture its tensors "
                       "describe, and writes config.json + model.safetensors computing the same log p(x).")  # fmt: skip
    c.add_argument("port", choices=["y0ast", "rosinality"],
                   help="y0ast: y0ast/Glow-PyTorch; rosinality: rosinality/glow-pytorch")  # fmt: skip
    c.add_argument("checkpoint", help="the port's checkpoint file (a state_dict saved with torch.save)")
    c.add_argument("--out", "-o", required=True, help="folder for the model (config.json + model.safetensors)")
    c.add_argument("--hparams", help="y0ast: the run's hparams.json (needed for models without 1x1 convolutions)")
    c.add_argument("--image-size", type=int_up_to(4096),
                   help="rosinality: the images' height and width (its checkpoint does not say)")  # fmt: skip
    c.add_argument("--n-bits", type=int, choices=range(1, 9), metavar="1..8",
                   help="bits per pixel the model was trained on (rosinality's train.py: --n_bits, default 5; "
                   "y0ast: 8)")  # fmt: skip
    c.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    import json

    from ..checkpoint import require_new_model_dir, save_model
    from ..convert import from_rosinality, from_y0ast, load_port_checkpoint
    from ..files import ensure_writable_dir

    out = require_new_model_dir(args.out)
    if args.port == "rosinality" and (args.image_size is None or args.n_bits is None):
        raise UsageError("a rosinality checkpoint does not say its image size or bits: pass --image-size and "
                         "--n-bits (its train.py: --img_size, default 64, and --n_bits, default 5)")  # fmt: skip
    state = load_port_checkpoint(args.checkpoint)
    if args.port == "rosinality":
        model = from_rosinality(state, args.image_size, args.n_bits)
    else:
        hparams = {}
        if args.hparams:
            try:
                hparams = json.loads(Path(args.hparams).read_text())
            except (OSError, ValueError) as error:
                raise UsageError(f"cannot read --hparams {args.hparams} ({error})") from None
        if args.n_bits is not None:
            hparams["n_bits"] = args.n_bits
        model = from_y0ast(state, hparams)
    ensure_writable_dir(out)
    save_model(model, out, metadata={"converted_from": f"{args.port}:{Path(args.checkpoint).name}"})
    c = model.config
    print(f"converted {args.checkpoint} ({args.port}): L={c.levels} K={c.depth} width={c.hidden_channels} "
          f"{c.coupling} {c.permutation}, {c.image_shape} images at {c.n_bits} bits -> {out}")  # fmt: skip
    return 0
