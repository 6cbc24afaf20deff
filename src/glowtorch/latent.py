"""Latent-space tools: exact encode/decode of pixels, temperature grids, interpolation, attribute
directions and manipulation, per-image likelihood scores.

Each function takes a model, tensors and (where random) a ``torch.Generator``; images go in and come
out as ``(B, C, H, W)`` uint8. Latents are lists with one tensor per level, finest first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .latent_files import (  # the file formats, re-exported: the latent tools' public API
    load_latents,
    model_fingerprint,
    read_directions,
    read_latents,
    save_latents,
    write_directions,
    write_latents,
)
from .layers import parameters_state
from .model import Glow
from .preprocess import dequantize, to_uint8

__all__ = [
    "attribute_directions",
    "decode_images",
    "encode_images",
    "float64_twin",
    "image_contexts",
    "interpolate",
    "load_latents",
    "manipulate",
    "mix_latents",
    "model_fingerprint",
    "read_directions",
    "read_latents",
    "round_trip_report",
    "save_latents",
    "slerp",
    "standard_noise",
    "temperature_grid",
    "write_directions",
    "write_latents",
]


def check_images(model: Glow, images: Tensor) -> None:
    """``ValueError`` unless ``images`` are ``(N, C, H, W)`` of the model's image shape."""
    expected = model.config.image_shape
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"images are {tuple(images.shape[1:])} (C, H, W) but the model expects {expected}")


# The largest round-trip error the exact paths accept in the model's dtype: far below half a bin (1/512 at
# 8 bits), so that decoding in another batch, with other rounding, still gives the same pixels.
ROUND_TRIP_TOLERANCE = 1e-4


def _model_input(model: Glow, images: Tensor) -> Tensor:
    """uint8 images at the centres of their bins, in the model's dtype and on its device."""
    check_images(model, images)
    ref = model.top_prior
    return dequantize(images, model.config.n_bits, noise=False).to(device=ref.device, dtype=ref.dtype)


def image_contexts(model: Glow, images: Tensor, context: Tensor | None = None) -> Tensor | None:
    """The contexts ``(N, C_c, h, w)`` (model space, on the model's device) that uint8 ``images`` ``(N, C, H, W)``
    are encoded under: ``context`` (N rows, or 1 for all) when given, else each image's own for a "lowres:F"
    model; None for an unconditional model (a context given to one is refused by the model). A "tensor:" model
    needs ``context``."""
    if context is None:
        if not model.config.condition:
            return None
        context = model.config.context_of(images)
    if context.dim() == 4 and len(context) == 1:
        context = context.expand(len(images), -1, -1, -1)
    ref = model.top_prior
    return context.to(device=ref.device, dtype=ref.dtype)


def _rows(context: Tensor | None, rows: slice | Tensor) -> Tensor | None:
    return None if context is None else context[rows]


def _to_images(model: Glow, x: Tensor) -> Tensor:
    return to_uint8(torch.nan_to_num(x, nan=0.0).clamp(-0.5, 0.5), model.config.n_bits).cpu()


def float64_twin(model: Glow) -> Glow:
    """``model`` itself if it computes in float64, else a float64 copy of it (same weights, eval mode),
    cached until one of its parameters changes. The exact paths recompute in it what float32 rounding
    cannot give back: a trained flow can amplify that rounding a millionfold around some images."""
    if model.top_prior.dtype == torch.float64:
        return model
    key = parameters_state(model)
    cached = model.__dict__.get("_float64_twin")
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, even when called in inference mode
            twin = Glow(model.config, dataclasses.replace(model.compute, precision="float32"))
            twin = twin.to(device=model.top_prior.device, dtype=torch.float64)
            twin.load_state_dict(model.state_dict())
        cached = (key, twin.eval())
        model.__dict__["_float64_twin"] = cached
    return cached[1]


def _encode_exact(
    model: Glow, x: Tensor, y: Tensor | None, context: Tensor | None = None
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Latents of ``x`` that decode exactly, the plain round trip's images, and each image's largest
    error ``(B,)`` in that round trip. Images whose error exceeds ``ROUND_TRIP_TOLERANCE`` are encoded
    again in float64 (and then all latents are float64)."""
    with model.full_precision():
        zs, _ = model.encode(x, y, context=context)
        x_back = model.decode(zs, y, context=context)
    # A non-finite round trip (float32 overflow in the inverse of a badly conditioned image) counts as
    # infinitely off, so that it is recomputed too (a NaN compares false with everything).
    error = torch.nan_to_num((x_back - x).abs().flatten(1).amax(1), nan=math.inf)
    off = error > ROUND_TRIP_TOLERANCE
    if off.any():
        twin_context = None if context is None else context[off].double()
        twin_zs, _ = float64_twin(model).encode(x[off].double(), None if y is None else y[off], context=twin_context)
        zs = [z.double().index_put((off,), z64) for z, z64 in zip(zs, twin_zs, strict=True)]
    return zs, x_back, error


@torch.inference_mode()
def encode_images(
    model: Glow,
    images: Tensor,
    y: Tensor | None = None,
    batch_size: int = 256,
    exact: bool = True,
    *,
    context: Tensor | None = None,
) -> list[Tensor]:
    """uint8 images -> latents. No dequantization noise: each pixel is placed at the centre of its bin,
    so ``decode_images`` of the result gives the same pixels back (after n_bits reduction). Conditional
    models encode under ``context`` (see ``image_contexts``: by default each image's own low-resolution one).

    With ``exact`` each batch is decoded again and compared with its input; images whose round trip in
    the model's dtype is off by more than ``ROUND_TRIP_TOLERANCE`` are encoded again in float64
    (``float64_twin``), and the latents come back in float64 (``decode_images`` then decodes in float64).
    Without it (e.g. for averages such as attribute directions) one pass in the model's dtype.
    """
    model.eval()
    parts = []
    context = image_contexts(model, images, context)
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        labels = None if y is None else y[rows]
        x = _model_input(model, images[rows])
        c = _rows(context, rows)
        parts.append(_encode_exact(model, x, labels, c)[0] if exact else model.encode(x, labels, context=c)[0])
    dtype = torch.float64 if any(z.dtype == torch.float64 for part in parts for z in part) else parts[0][0].dtype
    return [torch.cat([part[level].to(dtype) for part in parts]) for level in range(len(parts[0]))]


@torch.inference_mode()
def decode_images(
    model: Glow, zs: Sequence[Tensor], y: Tensor | None = None, *, context: Tensor | None = None
) -> Tensor:
    """Latents -> uint8 images ``(B, C, H, W)``; float64 latents are decoded in float64 (``float64_twin``).
    Conditional models decode under ``context`` (model space, B rows or 1)."""
    model.eval()
    if zs[0].dtype == torch.float64:
        model = float64_twin(model)
    ref = model.top_prior
    if context is not None:
        context = context.to(device=ref.device, dtype=ref.dtype)
    with model.full_precision():
        latents = [z.to(device=ref.device, dtype=ref.dtype) for z in zs]
        return _to_images(model, model.decode(latents, y, context=context))


@torch.inference_mode()
def round_trip_report(model: Glow, images: Tensor, y: Tensor | None = None, batch_size: int = 256) -> dict:
    """How well conditioned ``model`` is on uint8 ``images``: the round trip encode -> decode in the model's
    dtype (coupling networks in full precision), image by image, and how many images the exact paths
    recompute in float64. Conditional models: each image under its own context.

    Returns ``images``, ``float64_images`` (round trip off by more than ``ROUND_TRIP_TOLERANCE``),
    ``wrong_pixels`` (pixels the plain round trip changes), ``worst_error`` with ``worst_image``,
    ``amplification`` (worst error over the dtype's unit roundoff) and ``exact_wrong_pixels`` (pixels
    that ``decode_images(encode_images(...))`` changes: 0 when the exact paths hold).
    """
    model.eval()
    errors, wrong, exact_wrong = [], 0, 0
    context = image_contexts(model, images)
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        batch = images[rows]
        labels = None if y is None else y[rows]
        x = _model_input(model, batch)
        zs, x_back, error = _encode_exact(model, x, labels, _rows(context, rows))
        errors.append(error.double().cpu())
        pixels = to_uint8(x, model.config.n_bits).cpu()  # the input after n_bits reduction
        wrong += int((_to_images(model, x_back) != pixels).sum())
        exact_wrong += int((decode_images(model, zs, labels, context=_rows(context, rows)) != pixels).sum())
    errors = torch.cat(errors)
    worst = int(errors.argmax())
    unit_roundoff = torch.finfo(model.top_prior.dtype).eps / 2
    return {
        "images": len(images),
        "float64_images": int((errors > ROUND_TRIP_TOLERANCE).sum()),
        "wrong_pixels": wrong,
        "worst_error": errors[worst].item(),
        "worst_image": worst,
        "amplification": errors[worst].item() / unit_roundoff,
        "exact_wrong_pixels": exact_wrong,
    }


@torch.inference_mode()
def temperature_grid(
    model: Glow,
    temperatures: Sequence[float],
    per_row: int,
    generator: torch.Generator | None = None,
    y: Tensor | None = None,
    *,
    context: Tensor | None = None,
) -> Tensor:
    """``(len(temperatures) * per_row, C, H, W)`` uint8 samples: one row per temperature, the same noise in
    every row (the generator's state is replayed), so rows show the effect of temperature alone (the
    paper's temperature figure). Conditional models take a ``context`` of ``per_row`` (or 1) rows."""
    model.eval()
    generator = generator or torch.Generator(device=model.top_prior.device).manual_seed(0)
    start = generator.get_state()
    rows = []
    for temperature in temperatures:
        generator.set_state(start)
        rows.append(_to_images(model, model.sample(per_row, temperature, y=y, generator=generator, context=context)))
    return torch.cat(rows)


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation of each row of ``a`` and ``b`` ``(B, ...)``; linear where they are parallel."""
    a_flat, b_flat = a.flatten(1), b.flatten(1)
    cos = (a_flat * b_flat).sum(1) / (a_flat.norm(dim=1) * b_flat.norm(dim=1)).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, torch.full_like(sin, 1 - t), torch.sin((1 - t) * omega) / safe)
    wb = torch.where(parallel, torch.full_like(sin, t), torch.sin(t * omega) / safe)
    shape = (-1,) + (1,) * (a.dim() - 1)
    return wa.view(shape) * a + wb.view(shape) * b


@torch.inference_mode()
def interpolate(
    model: Glow,
    image_a: Tensor,
    image_b: Tensor,
    steps: int = 8,
    method: str = "linear",
    y: Tensor | None = None,
    *,
    context: Tensor | None = None,
) -> Tensor:
    """``steps`` uint8 images ``(steps, C, H, W)`` from ``image_a`` to ``image_b`` (each ``(C, H, W)``),
    interpolating every level's latent linearly or spherically ("slerp"). The ends are the inputs.

    Conditional models: with a ``context`` (1 row) both images are encoded and every frame decoded under
    it; without one each image is encoded under its own and the contexts are interpolated linearly beside
    the latents. Either way the ends are the inputs."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    ends = torch.stack([image_a, image_b])
    contexts = image_contexts(model, ends, context)
    za = encode_images(model, image_a.unsqueeze(0), y, context=_rows(contexts, slice(0, 1)))
    zb = encode_images(model, image_b.unsqueeze(0), y, context=_rows(contexts, slice(1, 2)))
    ts = torch.linspace(0, 1, steps).tolist()
    zs = mix_latents(za, zb, ts, method)
    frame_contexts = None if contexts is None else torch.cat([torch.lerp(contexts[:1], contexts[1:], t) for t in ts])
    return decode_images(model, zs, None if y is None else y.expand(steps), context=frame_contexts)


def mix_latents(
    za: Sequence[Tensor], zb: Sequence[Tensor], ts: Sequence[float], method: str = "linear"
) -> list[Tensor]:
    """The latents (each level ``(len(ts), ...)``) at positions ``ts`` on the linear or spherical ("slerp")
    path from one image's latents ``za`` to another's ``zb`` (each level ``(1, ...)``; float64 if either is)."""
    if method not in ("linear", "slerp"):
        raise ValueError(f"method must be linear or slerp, got {method!r}")
    mix = torch.lerp if method == "linear" else slerp
    pairs = [(a, b.to(a)) if a.dtype == torch.float64 else (a.to(b), b) for a, b in zip(za, zb, strict=True)]
    return [torch.cat([mix(a, b, t) for t in ts]) for a, b in pairs]


@torch.inference_mode()
def attribute_directions(
    model: Glow, images: Tensor, attributes: Tensor, labels: Tensor | None = None, batch_size: int = 256
) -> list[Tensor]:
    """One direction per attribute and level: mean latent of images with the attribute minus the mean
    latent of those without it (the paper's manipulation vectors).

    Args:
        images: ``(N, C, H, W)`` uint8.
        attributes: ``(N, A)`` bool, which image has which attribute.
        labels: ``(N,)`` each image's class, for class-conditional models: its latent is taken under it.

    Returns:
        A list over levels of ``(A, *latent_shape)`` tensors.
    """
    if attributes.dim() != 2 or len(attributes) != len(images):
        raise ValueError(f"attributes must be (N, A) for {len(images)} images, got {tuple(attributes.shape)}")
    sums_with: list[Tensor] | None = None
    sums_all: list[Tensor] | None = None
    attributes = attributes.to(torch.float64)
    for start in range(0, len(images), batch_size):
        y = None if labels is None else labels[start : start + batch_size]
        zs = encode_images(model, images[start : start + batch_size], y, exact=False)  # an average: no need
        # (conditional models: each image under its own context)
        mask = attributes[start : start + batch_size]
        with_part = [torch.einsum("na,n...->a...", mask, z.double().cpu()) for z in zs]
        all_part = [z.double().cpu().sum(0) for z in zs]
        sums_with = with_part if sums_with is None else [s + p for s, p in zip(sums_with, with_part, strict=True)]
        sums_all = all_part if sums_all is None else [s + p for s, p in zip(sums_all, all_part, strict=True)]
    count_with = attributes.sum(0)
    count_without = len(images) - count_with
    if (count_with == 0).any() or (count_without == 0).any():
        raise ValueError("every attribute needs images with it and images without it")
    directions = []
    for s_with, s_all in zip(sums_with, sums_all, strict=True):
        shape = (-1,) + (1,) * (s_with.dim() - 1)
        mean_with = s_with / count_with.view(shape)
        mean_without = (s_all.unsqueeze(0) - s_with) / count_without.view(shape)
        directions.append((mean_with - mean_without).float())
    return directions


@torch.inference_mode()
def manipulate(
    model: Glow, image: Tensor, direction: Sequence[Tensor], scales: Sequence[float], y: Tensor | None = None
) -> Tensor:
    """uint8 images ``(len(scales), C, H, W)``: ``decode(encode(image) + scale * direction)`` for each scale.
    ``direction`` is a list over levels of latent-shaped tensors."""
    context = image_contexts(model, image.unsqueeze(0))  # conditional models: the image's own, kept
    zs = encode_images(model, image.unsqueeze(0), y, context=context)
    if len(direction) != len(zs) or any(d.shape != z.shape[1:] for d, z in zip(direction, zs, strict=False)):
        raise ValueError("the direction does not match this model's latent shapes")
    shifted = [torch.cat([z + s * d.to(z) for s in scales]) for z, d in zip(zs, direction, strict=True)]
    return decode_images(model, shifted, None if y is None else y.expand(len(scales)), context=context)


@torch.inference_mode()
def standard_noise(
    model: Glow, zs: Sequence[Tensor], y: Tensor | None = None, *, context: Tensor | None = None
) -> list[Tensor]:
    """Each latent as the standard-normal noise its prior turns into it, ``(z - mean) / std`` per level
    (finest first): the top latent under the class prior of ``y`` (and the ``context`` of conditional
    models), each split's under the prior its coarser levels predict. Sampling at temperature 1 from
    this noise gives ``zs`` back."""
    zs = [z.to(model.top_prior) for z in zs]
    features = model.context_features(context, len(zs[0]))
    mean, log_std = model.top_prior_params(len(zs[0]), y, features[-1])
    noise = [torch.empty(0)] * len(zs)
    noise[-1] = (zs[-1] - mean) * torch.exp(-log_std)

    def put_back(level: int, kept: Tensor) -> Tensor:
        mean, log_std = model.splits[level].prior(kept, features[level])
        noise[level] = (zs[level] - mean) * torch.exp(-log_std)
        return zs[level]

    model.decode_levels(model.layout(zs[-1]), put_back, features)
    return [n.contiguous() for n in noise]


@torch.inference_mode()
def change_class(
    model: Glow, zs: Sequence[Tensor], y: Tensor, new_y: Tensor, *, context: Tensor | None = None
) -> Tensor:
    """ "Same handwriting, another digit": uint8 images ``(len(new_y), C, H, W)`` of one image's latents
    ``zs`` (batch 1, encoded under class ``y``) decoded under each class of ``new_y``. The image's
    standard noise (``standard_noise``) is kept and the class prior changed; in float64, so that the
    image's own class gives the image back exactly. Conditional models keep the image's ``context`` (1 row)."""
    if not model.config.num_classes:
        raise ValueError("changing the class needs a class-conditional model")
    twin = float64_twin(model)
    context = None if context is None else context.to(twin.top_prior)
    noise = standard_noise(twin, [z.double() for z in zs], y.view(1), context=context)
    noise = [n.expand(len(new_y), *n.shape[1:]) for n in noise]
    if context is not None:
        context = context.expand(len(new_y), -1, -1, -1)
    with twin.full_precision():
        _, x = twin.sample_from_noise(noise, [1.0] * len(noise), new_y.to(twin.top_prior.device), context)
    return _to_images(twin, x)


def relabel_images(
    model: Glow, zs: Sequence[Tensor], y: Tensor | None, label: int, *, context: Tensor | None = None
) -> Tensor:
    """Every image's handwriting under another class: uint8 images ``(B, C, H, W)`` of the latents ``zs``
    (batch B, encoded under classes ``y`` ``(B,)`` and, for conditional models, ``context`` ``(B, ...)``),
    each decoded under class ``label`` (``change_class``)."""
    if y is None:
        raise ValueError("these latents hold no classes: relabelling needs latents of a class-conditional model")
    new_y = torch.tensor([model.config.check_class(label, "--label")], device=model.top_prior.device)
    return torch.cat([
        change_class(model, [z[i : i + 1] for z in zs], y[i], new_y, context=_rows(context, slice(i, i + 1)))
        for i in range(len(y))
    ])  # fmt: skip
