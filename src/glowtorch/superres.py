"""Super-resolution with a model conditioned on ``"lowres:F"``: its samples measured against the context they
were drawn for, against the true image and against bicubic upsampling, and a figure of them.

Every figure is in grey levels of 0..255 (8-bit pixels, whatever the model's ``n_bits``):

- fidelity: the mean absolute difference between a sample's low-resolution version (``lowres_images``, the
  function that made the context) and the context; 0 means the sample is one of the images the context
  came from.
- PSNR (dB) of the mode (temperature 0) and of bicubic upsampling against the true image, the mean over
  images of ``10 log10(255^2 / MSE)``.
- diversity: the standard deviation of each pixel across samples of one context, averaged over pixels and
  contexts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .context import context_from_lowres, enlarge, lowres_factor, lowres_images
from .model import Glow
from .preprocess import dequantize, to_uint8

__all__ = ["bicubic_upsample", "superres_figure", "superres_report"]


def bicubic_upsample(lowres: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 ``(B, C, h, w)`` -> uint8 ``(B, C, *size)`` by bicubic interpolation (clamped and rounded)."""
    up = F.interpolate(lowres.double(), size=size, mode="bicubic", align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def sample_images(
    model: Glow, lowres: Tensor, temperature: float, generator: torch.Generator, batch_size: int = 500
) -> Tensor:
    """One uint8 sample ``(B, C, H, W)`` of ``p(x | context)`` per uint8 low-resolution image ``(B, C, h, w)``."""
    model.eval()
    parts = []
    ref = model.top_prior
    with model.full_precision():
        for start in range(0, len(lowres), batch_size):
            context = context_from_lowres(lowres[start : start + batch_size], model.config.n_bits)
            x = model.sample(len(context), temperature, generator=generator, context=context.to(ref))
            parts.append(to_uint8(x.clamp(-0.5, 0.5), model.config.n_bits).cpu())
    return torch.cat(parts)


def _psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR (dB) of uint8 ``a`` against ``b``, both ``(B, C, H, W)``; inf where they are equal."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse)


def superres_report(
    model: Glow,
    images: Tensor,
    temperatures: Sequence[float] = (0.0, 0.6, 1.0),
    diversity_samples: int = 8,
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = False,
) -> dict:
    """Fidelity, PSNR against bicubic, and diversity of a "lowres:F" model's samples for the contexts of
    uint8 ``images`` ``(N, C, H, W)`` (see the module's doc for each figure).

    Returns ``images``, ``fidelity_mae`` ``{temperature: grey levels}`` (one sample per image at each of
    ``temperatures``), ``bicubic_fidelity_mae``, ``psnr_mode`` and ``psnr_bicubic`` (mean over images, dB; the
    mode is the sample at temperature 0), and ``diversity`` ``{temperature: grey levels}`` from
    ``diversity_samples`` samples of every context at each nonzero temperature.
    """
    from tqdm import tqdm

    factor = lowres_factor(model.config.condition, "super-resolution")
    bits = model.config.n_bits
    if len(images) == 0:
        raise ValueError("no images to measure")
    truth = to_uint8(dequantize(images, bits, noise=False), bits)  # the images at the model's bits, as 0..255
    lowres = lowres_images(images, factor, bits)
    generator = torch.Generator(device=model.top_prior.device).manual_seed(seed)
    bicubic = bicubic_upsample(lowres, tuple(images.shape[2:]))

    def fidelity(samples: Tensor) -> float:
        return (lowres_images(samples, factor, bits).double() - lowres.double()).abs().mean().item()

    report: dict = {"images": len(images), "factor": factor, "fidelity_mae": {}, "diversity": {}}
    mode = None
    nonzero = [t for t in temperatures if t > 0]
    bar = tqdm(total=len(temperatures) + len(nonzero) * diversity_samples, desc="sampling", leave=False,
               disable=not progress)  # fmt: skip
    for temperature in temperatures:
        samples = sample_images(model, lowres, temperature, generator, batch_size)
        bar.update()
        report["fidelity_mae"][f"{temperature:g}"] = fidelity(samples)
        if temperature == 0:
            mode = samples
    if mode is None:
        mode = sample_images(model, lowres, 0.0, generator, batch_size)
    report["bicubic_fidelity_mae"] = fidelity(bicubic)
    report["psnr_mode"] = _finite_mean(_psnr(mode, truth))
    report["psnr_bicubic"] = _finite_mean(_psnr(bicubic, truth))
    for temperature in nonzero:
        total = torch.zeros(images.shape, dtype=torch.float64)
        squares = torch.zeros(images.shape, dtype=torch.float64)
        for _ in range(diversity_samples):
            samples = sample_images(model, lowres, temperature, generator, batch_size).double()
            total += samples
            squares += samples**2
            bar.update()
        mean = total / diversity_samples
        variance = (squares / diversity_samples - mean**2).clamp_min(0) * diversity_samples / (diversity_samples - 1)
        report["diversity"][f"{temperature:g}"] = variance.sqrt().mean().item()
    bar.close()
    return report


def _finite_mean(values: Tensor) -> float:
    """The mean of per-image PSNRs; an image reproduced exactly (infinite PSNR) counts as 100 dB."""
    return values.clamp(max=100.0).mean().item()


def superres_figure(
    model: Glow, images: Tensor, temperatures: Sequence[float] = (0.6, 1.0), per_temperature: int = 3, seed: int = 0
) -> tuple[Tensor, int]:
    """The cells of a figure for ``save_grid`` (uint8 ``(rows * columns, C, H, W)``) and its number of columns:
    one row per image of ``images``: its context (enlarged), bicubic upsampling, ``per_temperature`` samples
    at each temperature, the true image."""
    factor = lowres_factor(model.config.condition, "super-resolution")
    bits = model.config.n_bits
    size = tuple(images.shape[2:])
    lowres = lowres_images(images, factor, bits)
    generator = torch.Generator(device=model.top_prior.device).manual_seed(seed)
    columns = [enlarge(lowres, size), bicubic_upsample(lowres, size)]
    for temperature in temperatures:
        columns += [sample_images(model, lowres, temperature, generator) for _ in range(per_temperature)]
    columns.append(to_uint8(dequantize(images, bits, noise=False), bits))
    return torch.stack(columns, 1).flatten(0, 1), len(columns)
