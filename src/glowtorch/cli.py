"""The ``glowtorch`` command: parses arguments and calls the library. Errors are one line and exit 1.

The model and training flags of ``glowtorch train`` are derived from the fields of ``GlowConfig`` and
``TrainConfig`` (name, type, choices, help from the field docs); the dataclasses validate the values.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import math
import os
import re
import sys
import types
import typing
from pathlib import Path

import torch

from .allocator import keep_freed_memory
from .checkpoint import CheckpointError, load_model, require_new_run
from .data import DATASETS, DataError, load_dataset, load_dataset_for
from .files import ensure_writable_dir, first_line
from .model import GlowConfig, NotInitializedError
from .precision import PRECISION_CHOICES
from .presets import load_preset, preset_names
from .pretrained import is_pretrained, pretrained_card, pretrained_names
from .train import TrainConfig

__all__ = ["main"]


class UsageError(ValueError):
    """Bad command-line input."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"glowtorch: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- argument types
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# --------------------------------------------------------------------------- flags from dataclasses
def _argument_type(parse):
    """A field's own parser as an argparse type: its ValueError message becomes argparse's."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def field_docs(cls: type) -> dict[str, str]:
    """``{field: text}`` from the "Attributes:" section of ``cls``'s docstring (an entry may name several
    fields, as in ``epochs / steps / max_minutes: ...``)."""
    docs: dict[str, str] = {}
    names: list[str] = []
    section = (inspect.getdoc(cls) or "").partition("Attributes:")[2]
    for line in section.splitlines():
        entry = re.match(r"^    (\w[\w ,/]*):\s*(.*)$", line)
        if entry:
            names = re.findall(r"\w+", entry.group(1))
            for name in names:
                docs[name] = entry.group(2)
        elif line.startswith("        ") and names:
            for name in names:
                docs[name] += " " + line.strip()
    return docs


def _scalar_type(hint) -> type:
    """``int`` for ``int | None``; the hint itself otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> list[str]:
    """One flag per field of the dataclass ``cls`` (``--batch-size`` for ``batch_size``; booleans get
    ``--x/--no-x``); a flag not given is absent from the parsed namespace. Returns the fields' names."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    names = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = _scalar_type(hints[f.name])
        options: dict = {"default": argparse.SUPPRESS, "help": docs.get(f.name, "").replace("%", "%%")}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            options.update(type=float_list, metavar="X,Y,...")
        elif "parse" in f.metadata:
            options.update(type=_argument_type(f.metadata["parse"]), metavar=f.name.upper())
        else:
            options["type"] = kind
            if "choices" in f.metadata:
                options["choices"] = f.metadata["choices"]
        parser.add_argument("--" + f.name.replace("_", "-"), **options)
        names.append(f.name)
    return names


MODEL_FLAGS = ("image_shape", "num_classes")  # GlowConfig fields that come from the data, not from flags


# --------------------------------------------------------------------------- helpers
def _output(path: str) -> Path:
    output = Path(path)
    ensure_writable_dir(output.parent)
    return output


def _labels(model, label: int | None, n: int) -> torch.Tensor | None:
    """Labels for a class-conditional model: ``label`` for all n, else cycling through the classes."""
    if model.config.num_classes == 0:
        if label is not None:
            raise UsageError("--label needs a class-conditional model (trained with --conditional)")
        return None
    if label is not None and not 0 <= label < model.config.num_classes:
        raise UsageError(f"--label must be in 0..{model.config.num_classes - 1}, got {label}")
    return torch.full((n,), label) if label is not None else torch.arange(n) % model.config.num_classes


# --------------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    """Joins torchrun's process group when there is one (one process otherwise) and trains."""
    import torch.distributed

    from .distributed import init_distributed, shutdown

    dist = init_distributed(args.device)
    out = Path(args.out or f"runs/{args.preset or args.dataset or 'digits'}")
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        return _train(args, dist, out)
    except torch.distributed.DistError as error:  # a peer died or the network failed: its own output says why
        raise UsageError(f"another process of the job failed ({first_line(error)}); see its output") from None
    except BaseException:
        for folder in created:  # folders this command made and left empty
            with contextlib.suppress(OSError):  # another process may have written there meanwhile
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        raise
    finally:
        shutdown()


def _given(args, names: list[str]) -> dict:
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _train(args, dist, out: Path) -> int:
    from tqdm import tqdm

    from .train import train

    preset = load_preset(args.preset) if args.preset else {}
    dataset = args.dataset or preset.get("dataset") or "digits"
    say = tqdm.write if dist.is_main else (lambda *a, **k: None)
    train_values = {**preset.get("train", {}), **_given(args, args.train_flags)}
    if all(train_values.get(k) is None for k in ("epochs", "steps", "max_minutes")):
        train_values["epochs"] = 10
    config = _config(TrainConfig, train_values)
    if not args.resume:
        require_new_run(out)  # before loading data; the trainer checks again before writing
    image_size = args.image_size or preset.get("image_size")
    channels = args.channels or 3
    train_data = load_dataset(dataset, args.data_dir, train=True, image_size=image_size, channels=channels)
    test_data = load_dataset(
        dataset, args.data_dir, train=False, image_size=image_size or train_data.images.shape[2], channels=channels
    )
    model_values = {**preset.get("model", {}), **_given(args, args.model_flags)}
    if args.conditional:
        if train_data.labels is None:
            raise UsageError(f"--conditional needs labels, and the {dataset} dataset has none")
        model_values["num_classes"] = train_data.num_classes
    model_config = _config(GlowConfig, {"image_shape": train_data.image_shape, **model_values})
    ensure_writable_dir(out)
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


def _config(cls: type, values: dict):
    """``cls(**values)``; a value the dataclass refuses becomes a usage error naming it."""
    try:
        return cls(**values)
    except ValueError as error:
        raise UsageError(f"invalid option: {error} (see 'glowtorch train --help')") from None


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_bits_per_dim

    model = load_model(args.checkpoint, device=args.device)
    data = load_dataset_for(model.config.image_shape, args.dataset, args.data_dir, train=args.split == "train")
    result = evaluate_bits_per_dim(
        model, data, args.batch_size, args.draws, seed=args.seed, progress=not args.no_progress
    )
    line = (
        f"{args.dataset} {args.split}: {result['test_bpd']:.4f} bits/dim over {len(data)} images, {args.draws} draw(s)"
    )
    if "test_accuracy" in result:
        line += (f"; latent classifier accuracy {result['test_accuracy']:.4f}, "
                 f"highest p(x | y) {result['test_accuracy_likelihood']:.4f}")  # fmt: skip
    print(line)
    print(
        f"per image: median {result['test_bpd_median']:.4f}, "
        f"worst {result['test_bpd_max']:.4f} (image {result['test_worst_image']})"
    )
    if args.round_trip:
        from .latent import round_trip_report

        labels = data.labels if model.config.num_classes else None
        report = round_trip_report(model, data.images, labels)
        dtype = str(model.top_prior.dtype).removeprefix("torch.")
        print(
            f"round trip in {dtype}: {report['float64_images']} of {report['images']} images need float64 "
            f"({report['wrong_pixels']} wrong pixels without it); worst error {report['worst_error']:.3g} "
            f"(image {report['worst_image']}), {report['amplification']:.3g}x the {dtype} rounding; "
            f"exact paths: {report['exact_wrong_pixels']} wrong pixels"
        )
    return 0


def cmd_sample(args) -> int:
    from .images import save_grid
    from .preprocess import to_uint8

    model = _sampling_model(args, args.n)
    temperature = args.temperature[0] if len(args.temperature) == 1 else args.temperature
    y = _labels(model, args.label, args.n)
    output = _output(args.output)
    if args.compile:
        model.compile_decode()
    x = model.sample(args.n, temperature, y=y, generator=torch.Generator().manual_seed(args.seed))
    save_grid(to_uint8(x.clamp(-0.5, 0.5), model.config.n_bits), output, columns=args.columns, scale=args.scale)
    print(f"wrote {args.n} samples at temperature {args.temperature} to {output}")
    return 0


def _sampling_model(args, batch: int):
    """The checkpoint's model with ``--precision`` resolved for sampling (its choice printed)."""
    from .precision import resolve_precision

    model = load_model(args.checkpoint, device=args.device)
    choice = resolve_precision(args.precision, model.config, args.device, batch)
    print(choice.summary())
    return model.set_compute(precision=choice.precision)


def cmd_encode(args) -> int:
    from .checkpoint import resolve_checkpoint
    from .data import read_image_files
    from .latent import encode_images, write_latents

    checkpoint = args.checkpoint if is_pretrained(args.checkpoint) else resolve_checkpoint(args.checkpoint)
    model = load_model(checkpoint, device=args.device)
    images = read_image_files(args.images, model.config.image_shape)
    y = _labels(model, args.label, len(images))
    zs = encode_images(model, images, y)
    names = [Path(p).stem for p in args.images]
    write_latents(_output(args.output), model, zs, y, names, checkpoint)
    print(f"wrote latents of {len(images)} image(s), {len(zs)} levels, to {args.output}")
    return 0


def cmd_decode(args) -> int:
    from .images import save_grid
    from .latent import change_class, decode_images, read_latents

    latents = read_latents(args.latents)
    checkpoint = args.checkpoint or latents.checkpoint
    if not checkpoint:
        raise UsageError(f"{args.latents} names no checkpoint; pass --checkpoint")
    model = load_model(checkpoint, device=args.device)
    latents.check_model(model, args.latents)
    if args.label is None:
        images = decode_images(model, latents.zs, latents.y)
    else:  # the same handwriting under another class
        if latents.y is None:
            raise UsageError(f"{args.latents} holds no classes: --label needs latents of a class-conditional model")
        if not 0 <= args.label < model.config.num_classes:
            raise UsageError(f"--label must be from 0 to {model.config.num_classes - 1}")
        new_y = torch.tensor([args.label], device=model.top_prior.device)
        images = torch.cat([change_class(model, [z[i : i + 1] for z in latents.zs], latents.y[i], new_y)
                            for i in range(len(latents.y))])  # fmt: skip
    out = ensure_writable_dir(Path(args.output))
    for name, image in zip(latents.names, images, strict=True):
        save_grid(image.unsqueeze(0), out / f"{name}.png", columns=1, padding=0)
    print(f"wrote {len(images)} image(s) to {out}")
    return 0


def cmd_temperatures(args) -> int:
    from .images import save_grid
    from .latent import temperature_grid

    model = _sampling_model(args, args.n)
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

    model = load_model(args.checkpoint, device=args.device)
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
    from .latent import attribute_directions, write_directions

    model = load_model(args.checkpoint, device=args.device)
    data = load_dataset_for(model.config.image_shape, args.dataset, args.data_dir, train=True)
    names, table = data.attribute_table()
    if args.limit:
        data.images, table = data.images[: args.limit], table[: args.limit]
    keep = [i for i in range(len(names)) if 0 < int(table[:, i].sum()) < len(table)]
    if not keep:
        raise UsageError("no attribute has both images with it and images without it")
    labels = None
    if model.config.num_classes:  # each image's latent under its own class
        if data.labels is None:
            raise UsageError(f"the model is class-conditional and {args.dataset} has no labels")
        labels = data.labels[: len(data.images)]
    directions = attribute_directions(model, data.images, table[:, keep], labels)
    write_directions(_output(args.output), model, directions, [names[i] for i in keep], args.dataset)
    print(f"wrote {len(keep)} attribute directions ({', '.join(names[i] for i in keep[:8])}...) to {args.output}")
    return 0


def cmd_manipulate(args) -> int:
    from .data import read_image_files
    from .images import save_grid
    from .latent import manipulate, read_directions

    model = load_model(args.checkpoint, device=args.device)
    directions = read_directions(args.direction, model)
    if args.attribute not in directions:
        raise UsageError(f"unknown attribute {args.attribute!r}; {args.direction} has: {', '.join(directions)}")
    image = read_image_files([args.image], model.config.image_shape)[0]
    output = _output(args.output)
    frames = manipulate(model, image, directions[args.attribute], args.scales, _labels(model, args.label, 1))
    save_grid(frames, output, columns=len(args.scales), scale=args.scale)
    print(f"wrote {args.attribute} at scales {args.scales} to {output}")
    return 0


def cmd_score(args) -> int:
    from .evaluate import score_images, write_scores
    from .plots import plot_score_histogram

    model = load_model(args.checkpoint, device=args.device)
    scores = {}
    names = [spec.partition("=")[0] for spec in args.dataset]
    for spec in args.dataset:
        name, _, data_dir = spec.partition("=")
        label = name if names.count(name) == 1 else f"{name}:{Path(data_dir).name or data_dir}"
        if name not in DATASETS:
            raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
        data = load_dataset_for(model.config.image_shape, name, data_dir or None, train=False)
        images, labels = data.images[: args.limit], data.labels
        if model.config.num_classes and labels is None:
            raise UsageError(f"the model is class-conditional and {name} has no labels")
        labels = labels[: len(images)] if model.config.num_classes else None
        scores[label] = score_images(model, images, labels, args.batch_size, args.draws, args.seed).bits_per_dim
    csv_path = write_scores(_output(args.output), scores)
    histogram = Path(args.histogram) if args.histogram else csv_path.with_suffix(".png")
    plot_score_histogram(scores, _output(str(histogram)))
    for spec, values in scores.items():
        print(f"{spec}: {len(values)} images, mean {values.mean():.4f} bits/dim, median {values.median():.4f}")
    print(f"wrote {csv_path} and {histogram}")
    return 0


def cmd_fit_class_prior(args) -> int:
    from .checkpoint import save_model
    from .train import fit_class_prior

    model = load_model(args.checkpoint, device=args.device)
    if not model.config.num_classes:
        raise UsageError("fit-class-prior needs a class-conditional model (trained with --conditional)")
    data = load_dataset_for(model.config.image_shape, args.dataset, args.data_dir, train=True)
    if data.labels is None:
        raise UsageError(f"the {args.dataset} dataset has no labels to fit a class prior to")
    out = Path(args.out)
    if (out / "model.safetensors").exists() or (out / "config.json").exists():
        raise UsageError(f"{out} already holds a model; choose a new --out folder")
    ensure_writable_dir(out)
    fitted = fit_class_prior(model, data.images, data.labels, seed=args.seed, progress=not args.no_progress)
    save_model(fitted, out)
    print(f"fitted a spatial class prior to {len(data)} training images; model in {out} "
          f"(glowtorch evaluate {out} --dataset {args.dataset} ... gives both classifiers' accuracy)")  # fmt: skip
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


def cmd_prepare(args) -> int:
    import time

    from .store import prepare_store

    start = time.monotonic()
    manifest = prepare_store(args.dataset, args.data_dir, args.out, args.image_size, args.channels, args.workers)
    train, test = manifest["splits"]["train"], manifest["splits"]["test"]
    seconds = time.monotonic() - start
    skipped = train["skipped"] + test["skipped"]
    print(f"{args.out}: {train['count']} train / {test['count']} test images of shape {tuple(train['shape'][1:])}"
          + (f", {skipped} unreadable file(s) skipped" if skipped else "")
          + f"; {seconds:.1f} s ({(train['count'] + test['count']) / max(seconds, 1e-9):.0f} images/s). "
          f"Train on it with --dataset prepared --data-dir {args.out}")  # fmt: skip
    return 0


def cmd_demo(args) -> int:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise UsageError("the demo needs Gradio: pip install 'glowtorch[demo]'")
    from .demo import Explorer, launch

    checkpoint = args.checkpoint or "pretrained:mnist"
    explorer = Explorer.from_checkpoint(checkpoint, args.dataset, args.data_dir, args.device, not args.no_progress)
    print(f"serving {checkpoint} at http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    launch(explorer, args.host, args.port, quiet=True)
    return 0


def cmd_pretrained(args) -> int:
    for name in pretrained_names():
        card = pretrained_card(name)
        print(
            f"pretrained:{name:18s} {card['test_bpd']:.4f} bits/dim on the {card['dataset']} test set, "
            f"{card['parameters'] / 1e6:.2f}M parameters, {card['cpu_hours']:.1f} CPU-hours; trained with: "
            f"{card['command']}"
        )
    return 0


def cmd_presets(args) -> int:
    for name in preset_names():
        preset = load_preset(name)
        print(f"{name:12s} {preset['description']}")
    return 0


# --------------------------------------------------------------------------- parser
def _parent(*arguments: tuple[tuple, dict]) -> argparse.ArgumentParser:
    """A parent parser holding options that several commands share, declared once."""
    parent = argparse.ArgumentParser(add_help=False)
    for names, options in arguments:
        parent.add_argument(*names, **options)
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="glowtorch", description="Glow: generative flow with invertible 1x1 convolutions")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    device = _parent((("--device",), dict(default="cpu", help="cpu, cuda or cuda:N")))
    model = _parent(
        (
            ("checkpoint",),
            dict(help="model directory, run directory, or pretrained:NAME (a shipped model, see glowtorch pretrained)"),
        )
    )
    label = _parent((("--label",), dict(type=int, help="class of the images or samples (class-conditional models)")))
    scale = _parent((("--scale",), dict(type=positive_int, default=1, help="pixel size in the PNG")))
    progress = _parent((("--no-progress",), dict(action="store_true", help="no progress bar")))
    precision = _parent((("--precision",), dict(choices=PRECISION_CHOICES, default="auto",
                         help="coupling networks in bfloat16 or float32; auto: bfloat16 where this device "
                              "runs it at least 1.2x faster (measured)")))  # fmt: skip
    choices = sorted(DATASETS)
    dataset = _parent(
        (("--dataset",), dict(required=True, choices=choices)),
        (("--data-dir",), dict(help="folder holding the dataset's files")),
    )

    t = sub.add_parser("train", help="train a model", parents=[device, progress],
                       description="Train Glow; flags override the preset's values.")  # fmt: skip
    t.add_argument("--preset", help=f"one of: {', '.join(preset_names())}")
    t.add_argument("--dataset", choices=choices, help="default: the preset's, else digits")
    t.add_argument("--data-dir", help="folder holding the dataset's files")
    t.add_argument("--image-size", type=positive_int, help="center-crop and resize to this square size")
    t.add_argument("--channels", type=int, choices=[1, 3], help="channels for image folders (default 3)")
    t.add_argument("--out", "-o", help="run directory (default runs/PRESET)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    t.add_argument("--conditional", action="store_true", help="class-conditional model from the dataset's labels")
    architecture = t.add_argument_group("model (GlowConfig)")
    training = t.add_argument_group("training (TrainConfig)")
    t.set_defaults(
        func=cmd_train,
        model_flags=add_config_flags(architecture, GlowConfig, skip=MODEL_FLAGS),
        train_flags=add_config_flags(training, TrainConfig),
    )

    e = sub.add_parser("evaluate", help="test bits/dim of a checkpoint", parents=[model, dataset, device, progress])
    e.add_argument("--split", choices=["test", "train"], default="test")
    e.add_argument("--draws", type=positive_int, default=1, help="dequantization draws to average")
    e.add_argument("--batch-size", type=positive_int, default=500)
    e.add_argument("--seed", type=int, default=1234, help="seed of the dequantization noise")
    e.add_argument("--round-trip", action="store_true",
                   help="also report how exactly the model inverts these images (encode, then decode)")  # fmt: skip
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sample", help="a PNG grid of samples", parents=[model, label, scale, device, precision])
    s.add_argument("--n", type=positive_int, default=64)
    s.add_argument("--temperature", type=float_list, default=[0.7], help="one value, or one per level (finest first)")
    s.add_argument("--columns", type=positive_int)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--output", "-o", default="samples.png")
    s.add_argument("--compile", action="store_true", help="torch.compile the decoder (pays off for large --n)")
    s.set_defaults(func=cmd_sample)

    en = sub.add_parser("encode", help="images to latents (exact; no dequantization noise)",
                        parents=[model, label, device])  # fmt: skip
    en.add_argument("images", nargs="+", help="image files of the model's size and channel count")
    en.add_argument("--output", "-o", default="latents.safetensors")
    en.set_defaults(func=cmd_encode)

    de = sub.add_parser("decode", help="latents to images (one PNG per image)", parents=[device])
    de.add_argument("latents", help="a file written by glowtorch encode")
    de.add_argument("--checkpoint", help="default: the checkpoint the latents were encoded with")
    de.add_argument("--label", type=int, help="class-conditional models: decode each image's handwriting (its "
                    "standardized latents) under this class instead of its own")  # fmt: skip
    de.add_argument("--output", "-o", default="decoded")
    de.set_defaults(func=cmd_decode)

    te = sub.add_parser("temperatures", help="a grid of samples, one row per temperature",
                        parents=[model, label, scale, device, precision])  # fmt: skip
    te.add_argument("--temperatures", type=float_list, default=[0.0, 0.25, 0.5, 0.7, 0.8, 0.9, 1.0])
    te.add_argument("--n", type=positive_int, default=8, help="samples per row")
    te.add_argument("--seed", type=int, default=0)
    te.add_argument("--output", "-o", default="temperatures.png")
    te.set_defaults(func=cmd_temperatures)

    ip = sub.add_parser("interpolate", help="interpolate two images in latent space (PNG strip, GIF)",
                        parents=[model, label, scale, device])  # fmt: skip
    ip.add_argument("image_a")
    ip.add_argument("image_b")
    ip.add_argument("--steps", type=positive_int, default=8)
    ip.add_argument("--method", choices=["linear", "slerp"], default="linear")
    ip.add_argument("--output", "-o", default="interpolation.png")
    ip.add_argument("--gif", help="also write an animated GIF here")
    ip.set_defaults(func=cmd_interpolate)

    di = sub.add_parser("directions", help="attribute directions from a labeled dataset",
                        parents=[model, dataset, device])  # fmt: skip
    di.add_argument("--limit", type=positive_int, help="use only the first N training images")
    di.add_argument("--output", "-o", default="directions.safetensors")
    di.set_defaults(func=cmd_directions)

    ma = sub.add_parser("manipulate", help="move an image along an attribute direction",
                        parents=[model, label, scale, device])  # fmt: skip
    ma.add_argument("image")
    ma.add_argument("--direction", required=True, help="a file written by glowtorch directions")
    ma.add_argument("--attribute", required=True, help="e.g. Smiling (CelebA) or 3 (a class name)")
    ma.add_argument("--scales", type=signed_float_list, default=[-1.0, -0.5, 0.0, 0.5, 1.0])
    ma.add_argument("--output", "-o", default="manipulation.png")
    ma.set_defaults(func=cmd_manipulate)

    sc = sub.add_parser("score", help="per-image bits/dim of test sets (CSV + histogram), e.g. for OOD",
                        parents=[model, device])  # fmt: skip
    sc.add_argument("--dataset", action="append", required=True, metavar="NAME[=DIR]",
                    help="a dataset's test split, optionally with its folder; repeat to compare")  # fmt: skip
    sc.add_argument("--limit", type=positive_int, help="score only the first N images of each")
    sc.add_argument("--draws", type=positive_int, default=1, help="dequantization draws to average")
    sc.add_argument("--batch-size", type=positive_int, default=500)
    sc.add_argument("--seed", type=int, default=1234, help="seed of the dequantization noise")
    sc.add_argument("--output", "-o", default="scores.csv")
    sc.add_argument("--histogram", help="default: the CSV path with .png")
    sc.set_defaults(func=cmd_score)

    fc = sub.add_parser("fit-class-prior",
                        help="give a class-conditional model a per-class, per-position top prior fitted to data",
                        parents=[model, dataset, device, progress])  # fmt: skip
    fc.add_argument("--out", "-o", required=True, help="folder for the new model (config.json + model.safetensors)")
    fc.add_argument("--seed", type=int, default=0, help="seed of the dequantization noise")
    fc.set_defaults(func=cmd_fit_class_prior)

    pl = sub.add_parser("plot", help="plot a run's train and test bits/dim")
    pl.add_argument("run_dir")
    pl.add_argument("--output", "-o", help="default: RUN_DIR/bpd.png")
    pl.set_defaults(func=cmd_plot)

    pr = sub.add_parser("prepare", help="decode a dataset once into a memory-mapped store (--dataset prepared)")
    pr.add_argument("--dataset", required=True, choices=[c for c in choices if c != "prepared"])
    pr.add_argument("--data-dir", help="folder holding the dataset's files")
    pr.add_argument("--image-size", type=positive_int, help="center-crop and resize to this square size")
    pr.add_argument("--channels", type=int, choices=[1, 3], default=3, help="channels for image folders")
    pr.add_argument("--out", "-o", required=True, help="the store's folder")
    pr.add_argument("--workers", type=positive_int, help="decoding processes (default: all cores)")
    pr.set_defaults(func=cmd_prepare)

    dm = sub.add_parser("demo", help="explore a model in the browser (a local web page)", parents=[device, progress])
    dm.add_argument("checkpoint", nargs="?", help="model directory, run directory or pretrained:NAME "
                    "(default: pretrained:mnist)")  # fmt: skip
    dm.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    dm.add_argument("--port", type=positive_int, default=7860)
    dm.add_argument("--dataset", choices=choices, help="score its test split and compute directions from its "
                    "training split once (cached in the model folder's demo/), for models that lack them")  # fmt: skip
    dm.add_argument("--data-dir", help="folder holding the dataset's files")
    dm.set_defaults(func=cmd_demo)
    pt = sub.add_parser("pretrained", help="list the shipped pretrained models")
    pt.set_defaults(func=cmd_pretrained)
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


def quiet_third_party_warnings() -> None:
    """Keeps PyTorch's own deprecation notices (FutureWarning from its modules, e.g. its compiler) out of the
    user's terminal; every other warning is shown as usual."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch(\.|$)")


def main(argv: list[str] | None = None) -> int:
    argv = _join_negative_lists(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    quiet_third_party_warnings()
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (``glowtorch presets | head``): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except (
        UsageError,
        DataError,
        CheckpointError,
        NotInitializedError,
        FloatingPointError,
        ValueError,
        OSError,
    ) as error:
        print(f"glowtorch: error: {first_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("glowtorch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
