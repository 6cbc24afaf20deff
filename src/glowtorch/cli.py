"""The ``glowtorch`` command: parses arguments and calls the library. Errors are one line and exit 1."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_model
from .data import DATASETS, DataError, load_dataset
from .model import GlowConfig, NotInitializedError

__all__ = ["main"]


class UsageError(ValueError):
    """Bad command-line input."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"glowtorch: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- presets
def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".json")] for p in resources.files("glowtorch.presets").iterdir() if p.name.endswith(".json")
    )


def load_preset(name: str) -> dict:
    """A preset shipped in ``glowtorch/presets/NAME.json``: dataset, model and train options, paper figure."""
    if name not in preset_names():
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    return json.loads(resources.files("glowtorch.presets").joinpath(f"{name}.json").read_text())


# --------------------------------------------------------------------------- argument types
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers >= 0, got {text!r}")
    return values


# --------------------------------------------------------------------------- helpers
def ensure_writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".glowtorch-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(
            f"cannot write to {path} ({error.strerror or error}); choose another output directory"
        ) from None
    return path


def resolve_checkpoint(path: str) -> Path:
    """A model directory (config.json + model.safetensors) or a run directory holding ``model/``."""
    p = Path(path)
    if (p / "config.json").is_file():
        return p
    if (p / "model" / "config.json").is_file():
        return p / "model"
    raise CheckpointError(f"{p} is not a checkpoint: expected config.json and model.safetensors in it or in {p}/model")


def dataset_for(model_config: GlowConfig, args, train: bool):
    """Loads ``args.dataset`` shaped for ``model_config`` (resizing folders/CelebA to the model's size)."""
    channels, height, _ = model_config.image_shape
    resizable = args.dataset in ("folder", "celeba")
    data = load_dataset(
        args.dataset, args.data_dir, train=train, image_size=height if resizable else None, channels=channels
    )
    if data.image_shape != model_config.image_shape:
        raise DataError(
            f"{args.dataset} images are {data.image_shape} (C, H, W) but the checkpoint expects "
            f"{model_config.image_shape}; use data of the model's size and channel count"
        )
    return data


# --------------------------------------------------------------------------- commands
MODEL_FLAGS = ("levels", "depth", "hidden_channels", "coupling", "permutation", "n_bits")
TRAIN_FLAGS = (
    "batch_size", "optimizer", "lr", "warmup_steps", "grad_clip", "ema_decay", "init_images", "weight_y",
    "epochs", "steps", "max_minutes", "eval_every", "eval_draws", "seed", "keep_checkpoints",
)  # fmt: skip


def cmd_train(args) -> int:
    from .train import TrainConfig, checkpoint_paths, train

    preset = load_preset(args.preset) if args.preset else {}
    dataset = args.dataset or preset.get("dataset") or "digits"
    out = Path(args.out or f"runs/{args.preset or dataset}")
    ensure_writable_dir(out)
    if not args.resume and checkpoint_paths(out):
        raise UsageError(f"{out} already holds a training run: pass --resume to continue it, or choose another --out")
    image_size = args.image_size or preset.get("image_size")
    channels = args.channels or 3
    train_data = load_dataset(dataset, args.data_dir, train=True, image_size=image_size, channels=channels)
    test_data = load_dataset(
        dataset, args.data_dir, train=False, image_size=image_size or train_data.images.shape[2], channels=channels
    )
    model_values = dict(preset.get("model", {}))
    model_values.update({k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k) is not None})
    if args.no_learn_top:
        model_values["learn_top"] = False
    if args.conditional:
        if train_data.labels is None:
            raise UsageError(f"--conditional needs labels, and the {dataset} dataset has none")
        model_values["num_classes"] = train_data.num_classes
    model_config = GlowConfig(image_shape=train_data.image_shape, **model_values)
    train_values = dict(preset.get("train", {}))
    train_values.update({k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None})
    if args.flip:
        train_values["flip"] = True
    if args.temperatures:
        train_values["temperatures"] = args.temperatures
    if not any(train_values.get(k) for k in ("epochs", "steps", "max_minutes")):
        train_values["epochs"] = 10
    config = TrainConfig(**train_values)
    print(
        f"training on {dataset}: {len(train_data)} train / {len(test_data)} test images of shape "
        f"{train_data.image_shape}; L={model_config.levels} K={model_config.depth} "
        f"width={model_config.hidden_channels} -> {out}"
    )
    metrics = train(model_config, config, train_data, test_data, out, resume=args.resume,
                    progress=not args.no_progress, device=args.device)  # fmt: skip
    if "test_bpd" in metrics:
        print(f"test bits/dim {metrics['test_bpd']:.4f} after {metrics['step']} steps; samples in {out / 'samples'}")
    return 0


def cmd_evaluate(args) -> int:
    from .train import evaluate_bits_per_dim

    model = load_model(resolve_checkpoint(args.checkpoint), device=args.device)
    data = dataset_for(model.config, args, train=args.split == "train")
    result = evaluate_bits_per_dim(
        model, data, args.batch_size, args.draws, seed=args.seed, progress=not args.no_progress
    )
    line = (
        f"{args.dataset} {args.split}: {result['test_bpd']:.4f} bits/dim over {len(data)} images, {args.draws} draw(s)"
    )
    if "test_accuracy" in result:
        line += f"; latent classifier accuracy {result['test_accuracy']:.4f}"
    print(line)
    return 0


def cmd_sample(args) -> int:
    from .images import save_grid
    from .preprocess import to_uint8

    model = load_model(resolve_checkpoint(args.checkpoint), device=args.device)
    temperature = args.temperature[0] if len(args.temperature) == 1 else args.temperature
    y = None
    if model.config.num_classes:
        if args.label is not None and not 0 <= args.label < model.config.num_classes:
            raise UsageError(f"--label must be in 0..{model.config.num_classes - 1}, got {args.label}")
        y = (
            torch.full((args.n,), args.label)
            if args.label is not None
            else torch.arange(args.n) % model.config.num_classes
        )
    elif args.label is not None:
        raise UsageError("--label needs a class-conditional model (trained with --conditional)")
    output = Path(args.output)
    ensure_writable_dir(output.parent)
    x = model.sample(args.n, temperature, y=y, generator=torch.Generator().manual_seed(args.seed))
    save_grid(to_uint8(x.clamp(-0.5, 0.5), model.config.n_bits), output, columns=args.columns, scale=args.scale)
    print(f"wrote {args.n} samples at temperature {args.temperature} to {output}")
    return 0


def cmd_presets(args) -> int:
    for name in preset_names():
        preset = load_preset(name)
        print(f"{name:12s} {preset['description']}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="glowtorch", description="Glow: generative flow with invertible 1x1 convolutions")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    t = sub.add_parser("train", help="train a model", description="Train Glow; flags override the preset's values.")
    t.add_argument("--preset", help=f"one of: {', '.join(preset_names())}")
    t.add_argument("--dataset", choices=sorted(DATASETS), help="default: the preset's, else digits")
    t.add_argument("--data-dir", help="folder holding the dataset's files")
    t.add_argument("--image-size", type=positive_int, help="center-crop and resize to this square size")
    t.add_argument("--channels", type=positive_int, choices=[1, 3], help="channels for image folders (default 3)")
    t.add_argument("--out", "-o", help="run directory (default runs/PRESET)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    t.add_argument("--levels", type=positive_int)
    t.add_argument("--depth", type=positive_int)
    t.add_argument("--hidden-channels", type=positive_int)
    t.add_argument("--coupling", choices=["affine", "additive"])
    t.add_argument("--permutation", choices=["lu", "invconv", "shuffle", "reverse"])
    t.add_argument("--n-bits", type=positive_int, choices=range(1, 9), metavar="1..8")
    t.add_argument("--no-learn-top", action="store_true", help="fixed standard-normal top prior")
    t.add_argument("--conditional", action="store_true", help="class-conditional model from the dataset's labels")
    t.add_argument("--batch-size", type=positive_int)
    t.add_argument("--optimizer", choices=["adam", "adamax"])
    t.add_argument("--lr", type=non_negative_float)
    t.add_argument("--warmup-steps", type=int)
    t.add_argument("--grad-clip", type=non_negative_float)
    t.add_argument("--ema-decay", type=non_negative_float)
    t.add_argument("--init-images", type=positive_int)
    t.add_argument("--weight-y", type=non_negative_float)
    t.add_argument("--flip", action="store_true", help="random horizontal flips")
    t.add_argument("--epochs", type=positive_int)
    t.add_argument("--steps", type=positive_int)
    t.add_argument("--max-minutes", type=non_negative_float)
    t.add_argument("--eval-every", type=int, help="steps between evaluations (0: every epoch)")
    t.add_argument("--eval-draws", type=positive_int)
    t.add_argument("--temperatures", type=float_list, help="sample grid rows, e.g. 0,0.5,0.7,1")
    t.add_argument("--keep-checkpoints", type=positive_int)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", default="cpu")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="test bits/dim of a checkpoint")
    e.add_argument("checkpoint", help="model directory or run directory")
    e.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    e.add_argument("--data-dir")
    e.add_argument("--split", choices=["test", "train"], default="test")
    e.add_argument("--draws", type=positive_int, default=1, help="dequantization draws to average")
    e.add_argument("--batch-size", type=positive_int, default=500)
    e.add_argument("--seed", type=int, default=1234)
    e.add_argument("--device", default="cpu")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sample", help="a PNG grid of samples")
    s.add_argument("checkpoint", help="model directory or run directory")
    s.add_argument("--n", type=positive_int, default=64)
    s.add_argument("--temperature", type=float_list, default=[0.7], help="one value, or one per level (finest first)")
    s.add_argument("--label", type=int, help="class to sample (class-conditional models)")
    s.add_argument("--columns", type=positive_int)
    s.add_argument("--scale", type=positive_int, default=1, help="pixel size in the PNG")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--output", "-o", default="samples.png")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_sample)

    p = sub.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        UsageError,
        DataError,
        CheckpointError,
        NotInitializedError,
        FloatingPointError,
        ValueError,
        OSError,
    ) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"glowtorch: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("glowtorch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
