"""The ``glowtorch`` command: parses arguments and calls the library. Errors are one line and exit 1."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from importlib import resources
from pathlib import Path

import torch

from .allocator import keep_freed_memory
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
def _integer_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _integer_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _integer_at_least(text, 0, "an integer >= 0")


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def signed_float_list(text: str, minimum: float = -math.inf) -> list[float]:
    """Comma-separated finite numbers, each >= ``minimum``."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not (minimum <= v < math.inf) for v in values):
        bound = "" if minimum == -math.inf else f" >= {minimum:g}"
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers{bound}, got {text!r}")
    return values


def float_list(text: str) -> list[float]:
    """Comma-separated numbers >= 0 (temperatures)."""
    return signed_float_list(text, minimum=0.0)


# --------------------------------------------------------------------------- helpers
def ensure_writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".glowtorch-write-test-{os.getpid()}"  # per process: ranks check at once
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(
            f"cannot write to {path} ({error.strerror or error}); choose another output directory"
        ) from None
    return path


def _load(checkpoint: str, args):
    """The model of a checkpoint (model or run directory) on ``args.device``."""
    return load_model(resolve_checkpoint(checkpoint), device=args.device)


def _per_level(tensors: dict) -> list:
    """``z0, z1, ...`` of a latent or direction file, finest level first."""
    return [tensors[f"z{i}"] for i in range(sum(k.startswith("z") for k in tensors))]


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
MODEL_FLAGS = ("levels", "depth", "hidden_channels", "coupling", "permutation", "n_bits", "memory", "precision")
TRAIN_FLAGS = (
    "batch_size", "optimizer", "lr", "warmup_steps", "decay_steps", "grad_clip", "ema_decay", "init_images", "weight_y",
    "shift", "epochs", "steps", "max_minutes", "eval_every", "eval_draws", "seed", "keep_checkpoints",
)  # fmt: skip


def cmd_train(args) -> int:
    """Joins torchrun's process group when there is one (one process otherwise) and trains."""
    from .distributed import init_distributed, shutdown

    dist = init_distributed(args.device)
    try:
        return _train(args, dist)
    finally:
        shutdown()


def _train(args, dist) -> int:
    from .train import TrainConfig, checkpoint_paths, train

    preset = load_preset(args.preset) if args.preset else {}
    dataset = args.dataset or preset.get("dataset") or "digits"
    out = Path(args.out or f"runs/{args.preset or dataset}")
    say = print if dist.is_main else (lambda *a, **k: None)
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
    if args.no_channels_last:
        model_values["channels_last"] = False
    if args.conditional:
        if train_data.labels is None:
            raise UsageError(f"--conditional needs labels, and the {dataset} dataset has none")
        model_values["num_classes"] = train_data.num_classes
    model_config = GlowConfig(image_shape=train_data.image_shape, **model_values)
    train_values = dict(preset.get("train", {}))
    train_values.update({k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None})
    if args.flip:
        train_values["flip"] = True
    if args.compile is not None:
        train_values["compile"] = args.compile
    if args.temperatures:
        train_values["temperatures"] = args.temperatures
    if not any(train_values.get(k) for k in ("epochs", "steps", "max_minutes")):
        train_values["epochs"] = 10
    config = TrainConfig(**train_values)
    say(
        f"training on {dataset}: {len(train_data)} train / {len(test_data)} test images of shape "
        f"{train_data.image_shape}; L={model_config.levels} K={model_config.depth} "
        f"width={model_config.hidden_channels} -> {out}"
    )
    if dist.enabled:
        say(f"{dist.world_size} processes, {config.batch_size // dist.world_size} images each per step")
    metrics = train(model_config, config, train_data, test_data, out, resume=args.resume,
                    progress=not args.no_progress, dist=dist, log=say)  # fmt: skip
    if "test_bpd" in metrics:
        say(f"test bits/dim {metrics['test_bpd']:.4f} after {metrics['step']} steps; samples in {out / 'samples'}")
    return 0


def cmd_evaluate(args) -> int:
    from .train import evaluate_bits_per_dim

    model = _load(args.checkpoint, args)
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
    print(
        f"per image: median {result['test_bpd_median']:.4f}, "
        f"worst {result['test_bpd_max']:.4f} (image {result['test_worst_image']})"
    )
    return 0


def cmd_sample(args) -> int:
    from .images import save_grid
    from .preprocess import to_uint8

    model = _load(args.checkpoint, args)
    temperature = args.temperature[0] if len(args.temperature) == 1 else args.temperature
    y = _labels(model, args.label, args.n)
    output = _output(args.output)
    if args.compile:
        model.compile_decode()
    x = model.sample(args.n, temperature, y=y, generator=torch.Generator().manual_seed(args.seed))
    save_grid(to_uint8(x.clamp(-0.5, 0.5), model.config.n_bits), output, columns=args.columns, scale=args.scale)
    print(f"wrote {args.n} samples at temperature {args.temperature} to {output}")
    return 0


def _labels(model, label: int | None, n: int) -> torch.Tensor | None:
    """Labels for a class-conditional model: ``label`` for all n, else cycling through the classes."""
    if model.config.num_classes == 0:
        if label is not None:
            raise UsageError("--label needs a class-conditional model (trained with --conditional)")
        return None
    if label is not None and not 0 <= label < model.config.num_classes:
        raise UsageError(f"--label must be in 0..{model.config.num_classes - 1}, got {label}")
    return torch.full((n,), label) if label is not None else torch.arange(n) % model.config.num_classes


def _output(path: str) -> Path:
    output = Path(path)
    ensure_writable_dir(output.parent)
    return output


def _check_fingerprint(model, metadata: dict, path: str, kind: str) -> None:
    from .latent import model_fingerprint

    if metadata.get("glowtorch") != kind:
        raise UsageError(f"{path} is not a glowtorch {kind} file")
    if metadata.get("model_fingerprint") != model_fingerprint(model):
        raise UsageError(f"{path} was made with another model; recompute it with this checkpoint")


def cmd_encode(args) -> int:
    from .data import read_image_files
    from .latent import encode_images, model_fingerprint, save_latents

    checkpoint = resolve_checkpoint(args.checkpoint)
    model = load_model(checkpoint, device=args.device)
    images = read_image_files(args.images, model.config.image_shape)
    y = _labels(model, args.label, len(images))
    zs = encode_images(model, images, y)
    tensors = {f"z{i}": z for i, z in enumerate(zs)}
    if y is not None:
        tensors["y"] = y
    metadata = {
        "glowtorch": "latents",
        "checkpoint": str(checkpoint.resolve()),
        "model_fingerprint": model_fingerprint(model),
        "files": json.dumps([Path(p).stem for p in args.images]),
    }
    save_latents(_output(args.output), tensors, metadata)
    print(f"wrote latents of {len(images)} image(s), {len(zs)} levels, to {args.output}")
    return 0


def cmd_decode(args) -> int:
    from .images import save_grid
    from .latent import decode_images, load_latents

    tensors, metadata = load_latents(args.latents)
    checkpoint = args.checkpoint or metadata.get("checkpoint")
    if not checkpoint:
        raise UsageError(f"{args.latents} names no checkpoint; pass --checkpoint")
    model = _load(checkpoint, args)
    _check_fingerprint(model, metadata, args.latents, "latents")
    zs = _per_level(tensors)
    images = decode_images(model, zs, tensors.get("y"))
    names = json.loads(metadata.get("files", "[]")) or [f"image_{i:04d}" for i in range(len(images))]
    out = ensure_writable_dir(Path(args.output))
    for name, image in zip(names, images, strict=True):
        save_grid(image.unsqueeze(0), out / f"{name}.png", columns=1, padding=0)
    print(f"wrote {len(images)} image(s) to {out}")
    return 0


def cmd_temperatures(args) -> int:
    from .images import save_grid
    from .latent import temperature_grid

    model = _load(args.checkpoint, args)
    output = _output(args.output)
    generator = torch.Generator(device=model.top_prior.device).manual_seed(args.seed)
    grid = temperature_grid(model, args.temperatures, args.n, generator, y=_labels(model, args.label, args.n))
    save_grid(grid, output, columns=args.n, scale=args.scale)
    print(f"wrote {len(args.temperatures)} rows (temperatures {args.temperatures}) of {args.n} samples to {output}")
    return 0


def cmd_interpolate(args) -> int:
    from .data import read_image_files
    from .images import save_gif, save_grid
    from .latent import interpolate

    model = _load(args.checkpoint, args)
    images = read_image_files([args.image_a, args.image_b], model.config.image_shape)
    output = _output(args.output)
    y = _labels(model, args.label, 1)
    frames = interpolate(model, images[0], images[1], args.steps, args.method, y)
    save_grid(frames, output, columns=args.steps, scale=args.scale)
    if args.gif:
        save_gif(frames, _output(args.gif), scale=args.scale)
    print(
        f"wrote a {args.steps}-step {args.method} interpolation to {output}" + (f" and {args.gif}" if args.gif else "")
    )
    return 0


def cmd_directions(args) -> int:
    from .latent import attribute_directions, model_fingerprint, save_latents

    model = _load(args.checkpoint, args)
    data = dataset_for(model.config, args, train=True)
    names, table = data.attribute_table()
    if args.limit:
        data.images, table = data.images[: args.limit], table[: args.limit]
    keep = [i for i in range(len(names)) if 0 < int(table[:, i].sum()) < len(table)]
    if not keep:
        raise UsageError("no attribute has both images with it and images without it")
    directions = attribute_directions(model, data.images, table[:, keep])
    metadata = {
        "glowtorch": "directions",
        "model_fingerprint": model_fingerprint(model),
        "attributes": json.dumps([names[i] for i in keep]),
        "dataset": args.dataset,
    }
    save_latents(_output(args.output), {f"z{i}": d for i, d in enumerate(directions)}, metadata)
    print(f"wrote {len(keep)} attribute directions ({', '.join(names[i] for i in keep[:8])}...) to {args.output}")
    return 0


def cmd_manipulate(args) -> int:
    from .data import read_image_files
    from .images import save_grid
    from .latent import load_latents, manipulate

    model = _load(args.checkpoint, args)
    tensors, metadata = load_latents(args.direction)
    _check_fingerprint(model, metadata, args.direction, "directions")
    attributes = json.loads(metadata["attributes"])
    if args.attribute not in attributes:
        raise UsageError(f"unknown attribute {args.attribute!r}; {args.direction} has: {', '.join(attributes)}")
    index = attributes.index(args.attribute)
    direction = [z[index] for z in _per_level(tensors)]
    image = read_image_files([args.image], model.config.image_shape)[0]
    output = _output(args.output)
    frames = manipulate(model, image, direction, args.scales, _labels(model, args.label, 1))
    save_grid(frames, output, columns=len(args.scales), scale=args.scale)
    print(f"wrote {args.attribute} at scales {args.scales} to {output}")
    return 0


def cmd_score(args) -> int:
    import csv

    from .latent import score_images
    from .plots import plot_score_histogram

    model = _load(args.checkpoint, args)
    scores = {}
    names = [spec.partition("=")[0] for spec in args.dataset]
    for spec in args.dataset:
        name, _, data_dir = spec.partition("=")
        label = name if names.count(name) == 1 else f"{name}:{Path(data_dir).name or data_dir}"
        if name not in DATASETS:
            raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
        data = dataset_for(model.config, argparse.Namespace(dataset=name, data_dir=data_dir or None), train=False)
        if args.limit:
            data.images = data.images[: args.limit]
        y = data.labels[: len(data.images)] if model.config.num_classes and data.labels is not None else None
        if model.config.num_classes and y is None:
            raise UsageError(f"the model is class-conditional and {name} has no labels")
        scores[label] = score_images(model, data.images, y, generator=torch.Generator().manual_seed(args.seed))
    csv_path = _output(args.output)
    rows = [(spec, i, f"{v:.6f}") for spec, values in scores.items() for i, v in enumerate(values.tolist())]

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["dataset", "index", "bits_per_dim"])
            writer.writerows(rows)

    from .checkpoint import atomic_write

    atomic_write(csv_path, write_csv)
    histogram = Path(args.histogram) if args.histogram else csv_path.with_suffix(".png")
    plot_score_histogram(scores, _output(str(histogram)))
    for spec, values in scores.items():
        print(f"{spec}: {len(values)} images, mean {values.mean():.4f} bits/dim, median {values.median():.4f}")
    print(f"wrote {csv_path} and {histogram}")
    return 0


def cmd_plot(args) -> int:
    from .plots import plot_metrics

    metrics = Path(args.run_dir) / "metrics.jsonl"
    if not metrics.is_file():
        raise UsageError(f"{metrics} not found: pass a run directory written by glowtorch train")
    output = _output(args.output or str(Path(args.run_dir) / "bpd.png"))
    plot_metrics(metrics, output)
    print(f"wrote {output}")
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
    t.add_argument("--memory", choices=["standard", "checkpoint", "reversible"],
                   help="reversible: keep no activations of the flow steps (memory flat in depth)")  # fmt: skip
    t.add_argument("--precision", choices=["float32", "bfloat16"], help="bfloat16 coupling networks (autocast)")
    t.add_argument("--no-channels-last", action="store_true", help="compute in NCHW instead of NHWC memory order")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the training step")
    t.add_argument("--conditional", action="store_true", help="class-conditional model from the dataset's labels")
    t.add_argument("--batch-size", type=positive_int)
    t.add_argument("--optimizer", choices=["adam", "adamax"])
    t.add_argument("--lr", type=non_negative_float)
    t.add_argument("--warmup-steps", type=int)
    t.add_argument("--decay-steps", type=positive_int, help="cosine decay of the learning rate to 0 at this step")
    t.add_argument("--grad-clip", type=non_negative_float)
    t.add_argument("--ema-decay", type=non_negative_float)
    t.add_argument("--init-images", type=positive_int)
    t.add_argument("--weight-y", type=non_negative_float)
    t.add_argument("--flip", action="store_true", help="random horizontal flips")
    t.add_argument("--shift", type=non_negative_int, help="random translations of up to N pixels (0: none)")
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
    s.add_argument("--compile", action="store_true", help="torch.compile the decoder (pays off for large --n)")
    s.set_defaults(func=cmd_sample)

    en = sub.add_parser("encode", help="images to latents (exact; no dequantization noise)")
    en.add_argument("checkpoint")
    en.add_argument("images", nargs="+", help="image files of the model's size and channel count")
    en.add_argument("--label", type=int, help="class of the images (class-conditional models)")
    en.add_argument("--output", "-o", default="latents.safetensors")
    en.add_argument("--device", default="cpu")
    en.set_defaults(func=cmd_encode)

    de = sub.add_parser("decode", help="latents to images (one PNG per image)")
    de.add_argument("latents", help="a file written by glowtorch encode")
    de.add_argument("--checkpoint", help="default: the checkpoint the latents were encoded with")
    de.add_argument("--output", "-o", default="decoded")
    de.add_argument("--device", default="cpu")
    de.set_defaults(func=cmd_decode)

    te = sub.add_parser("temperatures", help="a grid of samples, one row per temperature")
    te.add_argument("checkpoint")
    te.add_argument("--temperatures", type=float_list, default=[0.0, 0.25, 0.5, 0.7, 0.8, 0.9, 1.0])
    te.add_argument("--n", type=positive_int, default=8, help="samples per row")
    te.add_argument("--label", type=int)
    te.add_argument("--seed", type=int, default=0)
    te.add_argument("--scale", type=positive_int, default=1)
    te.add_argument("--output", "-o", default="temperatures.png")
    te.add_argument("--device", default="cpu")
    te.set_defaults(func=cmd_temperatures)

    ip = sub.add_parser("interpolate", help="interpolate two images in latent space (PNG strip, GIF)")
    ip.add_argument("checkpoint")
    ip.add_argument("image_a")
    ip.add_argument("image_b")
    ip.add_argument("--steps", type=positive_int, default=8)
    ip.add_argument("--method", choices=["linear", "slerp"], default="linear")
    ip.add_argument("--label", type=int)
    ip.add_argument("--scale", type=positive_int, default=1)
    ip.add_argument("--output", "-o", default="interpolation.png")
    ip.add_argument("--gif", help="also write an animated GIF here")
    ip.add_argument("--device", default="cpu")
    ip.set_defaults(func=cmd_interpolate)

    di = sub.add_parser("directions", help="attribute directions from a labeled dataset")
    di.add_argument("checkpoint")
    di.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    di.add_argument("--data-dir")
    di.add_argument("--limit", type=positive_int, help="use only the first N training images")
    di.add_argument("--output", "-o", default="directions.safetensors")
    di.add_argument("--device", default="cpu")
    di.set_defaults(func=cmd_directions)

    ma = sub.add_parser("manipulate", help="move an image along an attribute direction")
    ma.add_argument("checkpoint")
    ma.add_argument("image")
    ma.add_argument("--direction", required=True, help="a file written by glowtorch directions")
    ma.add_argument("--attribute", required=True, help="e.g. Smiling (CelebA) or 3 (a class name)")
    ma.add_argument("--scales", type=signed_float_list, default=[-1.0, -0.5, 0.0, 0.5, 1.0])
    ma.add_argument("--label", type=int)
    ma.add_argument("--scale", type=positive_int, default=1, help="pixel size in the PNG")
    ma.add_argument("--output", "-o", default="manipulation.png")
    ma.add_argument("--device", default="cpu")
    ma.set_defaults(func=cmd_manipulate)

    sc = sub.add_parser("score", help="per-image bits/dim of test sets (CSV + histogram), e.g. for OOD")
    sc.add_argument("checkpoint")
    sc.add_argument("--dataset", action="append", required=True, metavar="NAME[=DIR]",
                    help="a dataset's test split, optionally with its folder; repeat to compare")  # fmt: skip
    sc.add_argument("--limit", type=positive_int, help="score only the first N images of each")
    sc.add_argument("--seed", type=int, default=1234, help="seed of the dequantization noise")
    sc.add_argument("--output", "-o", default="scores.csv")
    sc.add_argument("--histogram", help="default: the CSV path with .png")
    sc.add_argument("--device", default="cpu")
    sc.set_defaults(func=cmd_score)

    pl = sub.add_parser("plot", help="plot a run's train and test bits/dim")
    pl.add_argument("run_dir")
    pl.add_argument("--output", "-o", help="default: RUN_DIR/bpd.png")
    pl.set_defaults(func=cmd_plot)

    p = sub.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=cmd_presets)
    return parser


NUMBER_LIST = re.compile(r"^-?[\d.]+(e-?\d+)?(,\s*-?[\d.]+(e-?\d+)?)*$")


def _join_negative_lists(argv: list[str]) -> list[str]:
    """``--scales -1,0,1`` -> ``--scales=-1,0,1``: argparse would read "-1,0,1" as an option."""
    out: list[str] = []
    for token in argv:
        if (
            out
            and out[-1].startswith("--")
            and "=" not in out[-1]
            and token.startswith("-")
            and NUMBER_LIST.match(token)
        ):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _join_negative_lists(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    keep_freed_memory()
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
