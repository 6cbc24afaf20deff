"""Commands on the latent space: ``sample``, ``temperatures``, ``encode``, ``decode``, ``interpolate``,
``directions`` and ``manipulate``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..data import load_dataset_for
from ..pretrained import is_pretrained
from .common import (
    SEED,
    Shared,
    UsageError,
    class_labels,
    float_list,
    image_outputs,
    int_up_to,
    output_path,
    positive_int,
    read_contexts,
    signed_float_list,
)

__all__ = [
    "add_decode",
    "add_directions",
    "add_encode",
    "add_interpolate",
    "add_lowres",
    "add_manipulate",
    "add_sample",
    "add_temperatures",
]


def add_sample(sub: argparse._SubParsersAction, shared: Shared) -> None:
    s = sub.add_parser("sample", help="a PNG grid of samples",
                       parents=[shared.model, shared.label, shared.scale, shared.device, shared.precision])  # fmt: skip
    s.add_argument("--n", type=int_up_to(100_000), default=64, help="samples (per --context image)")
    s.add_argument("--temperature", type=float_list, default=[0.7], help="one value, or one per level (finest first)")
    s.add_argument("--context", nargs="+", metavar="LOWRES.png",
                   help="conditional models (--condition lowres:F): low-resolution images; each gives a row: the "
                   "image enlarged, then --n samples of it")  # fmt: skip
    s.add_argument("--columns", type=int_up_to(1024))
    s.add_argument("--seed", type=SEED, default=0)
    s.add_argument("--output", "-o", default="samples.png")
    s.add_argument("--compile", action="store_true", help="torch.compile the decoder (pays off for large --n)")
    s.set_defaults(func=cmd_sample)


def cmd_sample(args) -> int:
    from ..context import enlarge
    from ..images import save_grid
    from ..preprocess import to_uint8

    model = _sampling_model(args, args.n)
    temperature = args.temperature[0] if len(args.temperature) == 1 else args.temperature
    contexts = read_contexts(model, args.context, required="sample")
    y = class_labels(model, args.label, args.n)
    output = output_path(args.output)
    if args.compile:
        model.compile_decode()
    generator = torch.Generator().manual_seed(args.seed)
    if contexts is None:
        x = model.sample(args.n, temperature, y=y, generator=generator)
        save_grid(to_uint8(x.clamp(-0.5, 0.5), model.config.n_bits), output, columns=args.columns, scale=args.scale)
        print(f"wrote {args.n} samples at temperature {args.temperature} to {output}")
        return 0
    rows = []
    for context in contexts:  # each row: the context enlarged, then its samples
        x = model.sample(args.n, temperature, y=y, generator=generator, context=context.unsqueeze(0))
        lowres = to_uint8(context.unsqueeze(0), model.config.n_bits)
        rows += [enlarge(lowres, model.config.image_shape[1:]), to_uint8(x.clamp(-0.5, 0.5), model.config.n_bits)]
    save_grid(torch.cat(rows), output, columns=args.n + 1, scale=args.scale)
    print(f"wrote {len(contexts)} row(s) of {args.n} samples at temperature {args.temperature} to {output} "
          "(first column: the context, enlarged)")  # fmt: skip
    return 0


def add_lowres(sub: argparse._SubParsersAction, shared: Shared) -> None:
    lo = sub.add_parser("lowres", help="the low-resolution versions of images that a conditional model takes",
                        parents=[shared.model])  # fmt: skip
    lo.add_argument("images", nargs="+", help="image files of the model's size and channel count")
    lo.add_argument("--output", "-o", default="lowres", help="folder for the PNGs (one per image, same names)")
    lo.set_defaults(func=cmd_lowres)


def cmd_lowres(args) -> int:
    from ..context import lowres_factor, lowres_images
    from ..data import read_image_files
    from ..images import save_grid

    model = load_model(args.checkpoint)
    config = model.config
    factor = lowres_factor(config.condition, "lowres")
    images = read_image_files(args.images, config.image_shape)
    small = lowres_images(images, factor, config.n_bits)
    outputs = image_outputs(args.output, [Path(p).stem for p in args.images], inputs=args.images)
    for output, image in zip(outputs, small, strict=True):
        save_grid(image.unsqueeze(0), output, columns=1, padding=0)
    h, w = small.shape[2:]
    print(f"wrote {len(small)} image(s) of {w}x{h} pixels to {args.output}")
    return 0


def _sampling_model(args, batch: int):
    """The checkpoint's model with ``--precision`` resolved for sampling (its choice printed)."""
    from ..precision import resolve_precision

    model = load_model(args.checkpoint, device=args.device)
    model.config.check_size(batch, f"sampling {batch:,} images")
    choice = resolve_precision(args.precision, model.config, args.device, batch)
    print(choice.summary())
    return model.set_compute(precision=choice.precision)


def add_temperatures(sub: argparse._SubParsersAction, shared: Shared) -> None:
    parents = [shared.model, shared.label, shared.scale, shared.device, shared.precision]
    te = sub.add_parser("temperatures", help="a grid of samples, one row per temperature", parents=parents)
    te.add_argument("--temperatures", type=float_list, default=[0.0, 0.25, 0.5, 0.7, 0.8, 0.9, 1.0])
    te.add_argument("--n", type=int_up_to(1024), default=8, help="samples per row")
    te.add_argument("--context", metavar="LOWRES.png", help="conditional models: the low-resolution image")
    te.add_argument("--seed", type=SEED, default=0)
    te.add_argument("--output", "-o", default="temperatures.png")
    te.set_defaults(func=cmd_temperatures)


def cmd_temperatures(args) -> int:
    from ..images import save_grid
    from ..latent import temperature_grid

    model = _sampling_model(args, args.n)
    output = output_path(args.output)
    generator = torch.Generator(device=model.top_prior.device).manual_seed(args.seed)
    context = read_contexts(model, [args.context] if args.context else None, required="temperatures")
    grid = temperature_grid(model, args.temperatures, args.n, generator, y=class_labels(model, args.label, args.n),
                            context=context)  # fmt: skip
    save_grid(grid, output, columns=args.n, scale=args.scale)
    print(f"wrote {len(args.temperatures)} rows (temperatures {args.temperatures}) of {args.n} samples to {output}")
    return 0


def add_encode(sub: argparse._SubParsersAction, shared: Shared) -> None:
    en = sub.add_parser("encode", help="images to latents (exact; no dequantization noise)",
                        parents=[shared.model, shared.label, shared.device])  # fmt: skip
    en.add_argument("images", nargs="+", help="image files of the model's size and channel count")
    en.add_argument("--context", nargs="+", metavar="LOWRES.png",
                    help="conditional models: the low-resolution image(s) to encode under (one, or one per image); "
                    "default: each image's own")  # fmt: skip
    en.add_argument("--output", "-o", default="latents.safetensors")
    en.set_defaults(func=cmd_encode)


def cmd_encode(args) -> int:
    from ..checkpoint import resolve_checkpoint
    from ..data import read_image_files
    from ..latent import encode_images, image_contexts, write_latents

    checkpoint = args.checkpoint if is_pretrained(args.checkpoint) else resolve_checkpoint(args.checkpoint)
    model = load_model(checkpoint, device=args.device)
    images = read_image_files(args.images, model.config.image_shape)
    y = class_labels(model, args.label, len(images))
    context = image_contexts(model, images, _contexts_for(model, args.context, len(images)))  # stored beside zs
    zs = encode_images(model, images, y, context=context)
    names = [Path(p).stem for p in args.images]
    write_latents(output_path(args.output, inputs=args.images), model, zs, y, names, checkpoint, context)
    print(f"wrote latents of {len(images)} image(s), {len(zs)} levels, to {args.output}")
    return 0


def add_decode(sub: argparse._SubParsersAction, shared: Shared) -> None:
    de = sub.add_parser("decode", help="latents to images (one PNG per image)", parents=[shared.device])
    de.add_argument("latents", help="a file written by glowtorch encode")
    de.add_argument("--checkpoint", help="default: the checkpoint the latents were encoded with")
    de.add_argument("--label", type=int, help="class-conditional models: decode each image's handwriting (its "
                    "standardized latents) under this class instead of its own")  # fmt: skip
    de.add_argument("--context", nargs="+", metavar="LOWRES.png",
                    help="conditional models: decode under these low-resolution images (one, or one per image) "
                    "instead of the ones the latents were encoded under")  # fmt: skip
    de.add_argument("--output", "-o", default="decoded")
    de.set_defaults(func=cmd_decode)


def cmd_decode(args) -> int:
    from ..images import save_grid
    from ..latent import decode_images, read_latents, relabel_images

    latents = read_latents(args.latents)
    checkpoint = args.checkpoint or latents.checkpoint
    if not checkpoint:
        raise UsageError(f"{args.latents} names no checkpoint; pass --checkpoint")
    model = load_model(checkpoint, device=args.device)
    latents.check_model(model, args.latents)
    context = _contexts_for(model, args.context, len(latents.zs[0]))
    if context is not None:
        context = context.expand(len(latents.zs[0]), -1, -1, -1)
    elif model.config.condition:
        context = latents.context
        if context is None:
            raise UsageError(f"{args.latents} holds no context: pass --context")
    if args.label is None:
        images = decode_images(model, latents.zs, latents.y, context=context)
    elif latents.y is None:
        raise UsageError(f"{args.latents} holds no classes: --label needs latents of a class-conditional model")
    else:  # the same handwriting under another class
        images = relabel_images(model, latents.zs, latents.y, args.label, context=context)
    outputs = image_outputs(args.output, latents.names, inputs=[args.latents])
    for output, image in zip(outputs, images, strict=True):
        save_grid(image.unsqueeze(0), output, columns=1, padding=0)
    print(f"wrote {len(images)} image(s) to {args.output}")
    return 0


def add_interpolate(sub: argparse._SubParsersAction, shared: Shared) -> None:
    ip = sub.add_parser("interpolate", help="interpolate two images in latent space (PNG strip, GIF)",
                        parents=[shared.model, shared.label, shared.scale, shared.device])  # fmt: skip
    ip.add_argument("image_a")
    ip.add_argument("image_b")
    ip.add_argument("--steps", type=int_up_to(1024), default=8)
    ip.add_argument("--method", choices=["linear", "slerp"], default="linear")
    ip.add_argument("--output", "-o", default="interpolation.png")
    ip.add_argument("--gif", help="also write an animated GIF here")
    ip.add_argument("--context", metavar="LOWRES.png",
                    help="conditional models: encode both images and decode every frame under this low-resolution "
                    "image; default: each image's own, interpolated beside the latents")  # fmt: skip
    ip.set_defaults(func=cmd_interpolate)


def cmd_interpolate(args) -> int:
    from ..data import read_image_files
    from ..images import save_gif, save_grid
    from ..latent import interpolate

    model = load_model(args.checkpoint, device=args.device)
    images = read_image_files([args.image_a, args.image_b], model.config.image_shape)
    output = output_path(args.output)
    y = class_labels(model, args.label, 1)
    context = read_contexts(model, [args.context] if args.context else None)
    frames = interpolate(model, images[0], images[1], args.steps, args.method, y, context=context)
    save_grid(frames, output, columns=args.steps, scale=args.scale)
    if args.gif:
        save_gif(frames, output_path(args.gif), scale=args.scale)
    print(
        f"wrote a {args.steps}-step {args.method} interpolation to {output}" + (f" and {args.gif}" if args.gif else "")
    )
    return 0


def _contexts_for(model, paths: list[str] | None, count: int) -> torch.Tensor | None:
    """``--context`` images for ``count`` images: one for all, or one each."""
    context = read_contexts(model, paths)
    if context is not None and len(context) not in (1, count):
        raise UsageError(f"--context: give one low-resolution image, or one per image ({count}), not {len(context)}")
    return context


def add_directions(sub: argparse._SubParsersAction, shared: Shared) -> None:
    di = sub.add_parser("directions", help="attribute directions from a labeled dataset",
                        parents=[shared.model, shared.dataset, shared.device])  # fmt: skip
    di.add_argument("--limit", type=positive_int, help="use only the first N training images")
    di.add_argument("--output", "-o", default="directions.safetensors")
    di.set_defaults(func=cmd_directions)


def cmd_directions(args) -> int:
    from ..latent import attribute_directions, write_directions

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
    write_directions(output_path(args.output), model, directions, [names[i] for i in keep], args.dataset)
    print(f"wrote {len(keep)} attribute directions ({', '.join(names[i] for i in keep[:8])}...) to {args.output}")
    return 0


def add_manipulate(sub: argparse._SubParsersAction, shared: Shared) -> None:
    ma = sub.add_parser("manipulate", help="move an image along an attribute direction",
                        parents=[shared.model, shared.label, shared.scale, shared.device])  # fmt: skip
    ma.add_argument("image")
    ma.add_argument("--direction", required=True, help="a file written by glowtorch directions")
    ma.add_argument("--attribute", required=True, help="e.g. Smiling (CelebA) or 3 (a class name)")
    ma.add_argument("--scales", type=signed_float_list, default=[-1.0, -0.5, 0.0, 0.5, 1.0])
    ma.add_argument("--output", "-o", default="manipulation.png")
    ma.set_defaults(func=cmd_manipulate)


def cmd_manipulate(args) -> int:
    from ..data import read_image_files
    from ..images import save_grid
    from ..latent import manipulate, read_directions

    model = load_model(args.checkpoint, device=args.device)
    directions = read_directions(args.direction, model)
    if args.attribute not in directions:
        raise UsageError(f"unknown attribute {args.attribute!r}; {args.direction} has: {', '.join(directions)}")
    image = read_image_files([args.image], model.config.image_shape)[0]
    output = output_path(args.output)
    frames = manipulate(model, image, directions[args.attribute], args.scales, class_labels(model, args.label, 1))
    save_grid(frames, output, columns=len(args.scales), scale=args.scale)
    print(f"wrote {args.attribute} at scales {args.scales} to {output}")
    return 0
