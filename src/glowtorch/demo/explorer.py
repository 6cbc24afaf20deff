"""``Explorer``: what the page computes, with no Gradio in it: sampling, drawn or uploaded images brought
to the model's input, exact reconstruction and likelihood, interpolation, editing along attribute
directions, for class-conditional models one image decoded under every label, and super-resolution with a
second model conditioned on the image's low-resolution version."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import load_model, resolve_checkpoint
from ..context import condition_kind, context_from_lowres, lowres_factor, lowres_images
from ..evaluate import score_images
from ..latent import change_class, decode_images, encode_images, mix_latents, read_directions
from ..model import Glow
from ..preprocess import to_uint8
from ..reference import build_reference, find_reference_files, read_test_scores
from .inputs import DemoError, finite_number, prepare_image, seed_number, unit_number

__all__ = ["MAX_SAMPLES", "SUPERRES_MODEL", "Explorer", "Reading", "SuperResolution"]

SUPERRES_MODEL = "pretrained:mnist-sr4"  # the Super-resolve tab's model beside a model of its images

MAX_SAMPLES = 64
READ_DRAWS = 4  # dequantization draws averaged for an image's bits/dim


@dataclass
class Reading:
    """What the page says of one image: its reconstruction, bits/dim and place among the test scores."""

    image: Tensor
    reconstruction: Tensor
    bits_per_dim: float
    percentile: float | None
    verdict: str


@dataclass
class SuperResolution:
    """One image super-resolved: its low-resolution version ``lowres`` ``(C, h, w)``, ``samples``
    ``(n, C, H, W)`` drawn given it, each sample's bits/dim given the context (``(n,)``), and the image's own."""

    lowres: Tensor
    samples: Tensor
    bits_per_dim: Tensor
    image_bits_per_dim: float


class Explorer:
    """A model and what the page needs of it, computed once.

    Args:
        model: the model (eval mode).
        name: how the page names it.
        test_scores: ``(N,)`` per-image test-set bits/dim (for the in/out-of-distribution reading), or None.
        examples: ``(M, C, H, W)`` uint8 test images to pick from, or None.
        directions: ``{attribute: [per-level latent]}`` for the edit sliders, or None.
        superres: a model of the same images conditioned on their low-resolution version
            (``condition="lowres:F"``) for the Super-resolve tab, or None.
    """

    def __init__(
        self,
        model: Glow,
        name: str,
        test_scores: Tensor | None = None,
        examples: Tensor | None = None,
        directions: dict[str, list[Tensor]] | None = None,
        superres: Glow | None = None,
    ) -> None:
        _check_models(model, name, superres)
        self.superres = None if superres is None else superres.eval()
        self.model = model.eval()
        self.name = name
        self.test_scores = None if test_scores is None else test_scores.double().sort().values
        self.examples = examples
        self.directions = directions or {}
        self._latents: dict[str, list[Tensor]] = {}

    @property
    def conditional(self) -> bool:
        return self.model.config.num_classes > 0

    @property
    def levels(self) -> int:
        return len(self.model.latent_shapes)

    def _label(self, label: int | float | None, n: int = 1) -> Tensor | None:
        if not self.conditional:
            return None
        try:
            number = self.model.config.check_class(label)
        except ValueError as error:
            raise DemoError(str(error)) from None
        return torch.full((n,), number, dtype=torch.long)

    # ----------------------------------------------------------------- sample
    def sample(
        self, temperature: float, seed: int = 0, label: int | None = None, n: int = 32,
        level_temperatures: str = "",
    ) -> Tensor:  # fmt: skip
        """``n`` samples ``(n, C, H, W)`` uint8 at ``temperature`` in [0, 1] (or per level: a comma-separated
        list, finest level first, overriding it)."""
        temperatures: float | list[float] = unit_number(temperature, "temperature")
        if level_temperatures and level_temperatures.strip():
            try:
                values = [float(v) for v in level_temperatures.split(",") if v.strip()]
            except ValueError:
                raise DemoError(f"per-level temperatures are {self.levels} numbers separated by commas") from None
            if len(values) != self.levels:
                raise DemoError(f"give {self.levels} per-level temperatures (finest first), got {len(values)}")
            temperatures = [unit_number(v, "each per-level temperature") for v in values]
        n, generator = _draws(n, seed)
        y = self._label(label, n)
        with torch.inference_mode():
            x = self.model.sample(n, temperatures, y=y, generator=generator)
        return to_uint8(x.clamp(-0.5, 0.5), self.model.config.n_bits)

    # ----------------------------------------------------------------- read one image
    def prepare(self, value: Any) -> tuple[Tensor, str]:
        return prepare_image(value, self.model.config.image_shape)

    def latents(self, image: Tensor, label: int | None = None) -> list[Tensor]:
        """The exact latents of one image ``(C, H, W)`` uint8 (cached by content and label)."""
        key = hashlib.sha1(image.numpy().tobytes() + str(label).encode()).hexdigest()
        if key not in self._latents:
            if len(self._latents) > 256:
                self._latents.clear()
            self._latents[key] = encode_images(self.model, image.unsqueeze(0), self._label(label))
        return self._latents[key]

    def read(self, image: Tensor, label: int | None = None) -> Reading:
        """Exact reconstruction, bits/dim (``evaluate.score_images``: the mean of ``READ_DRAWS`` fixed
        dequantization draws) and where it falls among the test set's scores."""
        y = self._label(label)
        reconstruction = decode_images(self.model, self.latents(image, label), y)[0]
        bpd = score_images(self.model, image.unsqueeze(0), y, draws=READ_DRAWS).bits_per_dim[0].item()
        percentile, verdict = None, "no test-set scores for this model: start the demo with --dataset to compare"
        if self.test_scores is not None:
            scores = self.test_scores
            percentile = (
                100.0 * torch.searchsorted(scores, torch.tensor([bpd], dtype=torch.float64)).item() / len(scores)
            )
            worst = scores[int(0.999 * (len(scores) - 1))].item()
            if bpd <= scores[int(0.99 * (len(scores) - 1))].item():
                verdict = f"in distribution: {percentile:.1f}% of test images score lower (better)"
            elif bpd <= worst:
                verdict = f"unusual: more bits/dim than {percentile:.1f}% of test images"
            else:
                verdict = f"out of distribution: more bits/dim than {percentile:.2f}% of test images"
        return Reading(image, reconstruction, bpd, percentile, verdict)

    def histogram(self, marker: float | None = None) -> np.ndarray:
        """The test set's bits/dim as a histogram (RGB array), with ``marker`` as a red line."""
        if self.test_scores is None:
            raise DemoError("no test-set scores for this model")
        if not hasattr(self, "_histogram"):
            self._histogram = _histogram_base(self.test_scores.numpy())
        base, to_column, (top, bottom) = self._histogram
        picture = base.copy()
        if marker is not None and math.isfinite(marker):
            column = int(np.clip(to_column(marker), 0, picture.shape[1] - 2))
            picture[top:bottom, column : column + 2] = (220, 30, 30)
        return picture

    # ----------------------------------------------------------------- super-resolve
    def superresolve(self, image: Tensor, temperature: float, seed: int = 0, n: int = 16) -> SuperResolution:
        """``n`` samples of the super-resolution model given the low-resolution version of ``image`` ``(C, H, W)``
        uint8, at ``temperature`` in [0, 1], with their bits/dim given that context (``score_images``, the mean
        of ``READ_DRAWS`` dequantization draws)."""
        model = self.superres
        if model is None:
            raise DemoError("no super-resolution model: start the demo with --superres MODEL")
        temperature = unit_number(temperature, "temperature")
        n, generator = _draws(n, seed)
        bits = model.config.n_bits
        lowres = lowres_images(image.unsqueeze(0), lowres_factor(model.config.condition), bits)
        context = context_from_lowres(lowres, bits).to(model.top_prior)
        with torch.inference_mode(), model.full_precision():
            x = model.sample(n, temperature, generator=generator, context=context)
        samples = to_uint8(x.clamp(-0.5, 0.5), bits)
        # the image and its samples, all given the image's context (not each sample's own low-resolution version)
        both = torch.cat([image.unsqueeze(0), samples])
        contexts = context.expand(len(both), *context.shape[1:])
        scored = score_images(model, both, draws=READ_DRAWS, contexts=contexts).bits_per_dim
        return SuperResolution(lowres[0], samples, scored[1:], scored[0].item())

    # ----------------------------------------------------------------- interpolate
    def interpolate(
        self, a: Tensor, b: Tensor, t: float, method: str = "linear", label: int | None = None, steps: int = 9
    ) -> tuple[Tensor, Tensor]:
        """The image at ``t`` in [0, 1] on the path from ``a`` to ``b``, and the whole path in ``steps`` images."""
        return self.frame(a, b, t, method, label), self.path(a, b, method, label, steps)

    def frame(self, a: Tensor, b: Tensor, t: float, method: str = "linear", label: int | None = None) -> Tensor:
        """The image at ``t`` in [0, 1] on the linear or spherical ("slerp") latent path from ``a`` to ``b``."""
        return self.path(a, b, method, label, positions=[unit_number(t, "the position on the path")])[0]

    def path(
        self, a: Tensor, b: Tensor, method: str = "linear", label: int | None = None, steps: int = 9,
        positions: list[float] | None = None,
    ) -> Tensor:  # fmt: skip
        """``steps`` images ``(steps, C, H, W)`` evenly along the path from ``a`` to ``b`` (or one per
        position in ``positions``), from the two images' cached latents."""
        if method not in ("linear", "slerp"):
            raise DemoError("the path is linear or slerp")
        ts = positions if positions is not None else torch.linspace(0, 1, steps).tolist()
        zs = mix_latents(self.latents(a, label), self.latents(b, label), ts, method)
        y = self._label(label, len(ts))
        return decode_images(self.model, zs, y)

    # ----------------------------------------------------------------- edit
    def edit(self, image: Tensor, amounts: dict[str, float], label: int | None = None) -> Tensor:
        """``image`` moved along each direction by its amount (``{attribute: amount}``), decoded exactly."""
        unknown = [name for name in amounts if name not in self.directions]
        if unknown:
            raise DemoError(f"no direction named {unknown[0]!r}")
        zs = [z.clone() for z in self.latents(image, label)]
        for name, amount in amounts.items():
            amount = finite_number(amount, f"the amount of {name}")
            if abs(amount) > 10:
                raise DemoError(f"keep the amount of {name} within -10 to 10")
            for z, d in zip(zs, self.directions[name], strict=True):
                z += amount * d.to(z)
        return decode_images(self.model, zs, self._label(label))[0]

    def load_directions(self, path: str | Path) -> list[str]:
        """Reads a directions file made for this model (``glowtorch directions``); returns its attributes."""
        try:
            directions = read_directions(path, self.model)
        except ValueError as error:
            raise DemoError(str(error).replace(str(path), "the directions file")) from None
        except Exception:
            raise DemoError("that is not a directions file made by glowtorch directions") from None
        self.directions = directions
        return list(directions)

    def relabel(self, image: Tensor, label: int) -> Tensor:
        """Class-conditional models: the image's latent (under ``label``) decoded under every class
        ``(K, C, H, W)``: the same handwriting as another digit."""
        if not self.conditional:
            raise DemoError("this model is not class-conditional")
        zs = self.latents(image, label)
        return change_class(self.model, zs, self._label(label), torch.arange(self.model.config.num_classes))

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path, dataset: str | None = None, data_dir: str | None = None,
        device: str = "cpu", progress: bool = True, superres: str | Path | None = "auto",
    ) -> Explorer:  # fmt: skip
        """The explorer of a run folder, model folder or ``pretrained:NAME``. Test-set scores, a few test
        images and class or attribute directions come from the model folder (``test_scores.safetensors``
        and ``directions.safetensors`` beside the weights, as shipped models have them, or ``demo/``), else
        are computed from ``dataset`` once and cached in ``demo/`` beside the weights.

        ``superres`` is the Super-resolve tab's model: a folder or ``pretrained:NAME``, None for no tab, or
        "auto": ``SUPERRES_MODEL`` when it models the same images (28x28 greyscale 8-bit digits)."""
        folder = resolve_checkpoint(checkpoint)
        model = load_model(folder, device=device).eval()
        _check_models(model, str(checkpoint))
        superres_model = None
        if superres == "auto":
            shipped = load_model(SUPERRES_MODEL, device=device) if _shipped(SUPERRES_MODEL) else None
            same = shipped is not None and (shipped.config.image_shape, shipped.config.n_bits) == (
                model.config.image_shape, model.config.n_bits)  # fmt: skip
            superres_model = shipped if same and not model.config.condition else None
        elif superres is not None:
            superres_model = load_model(superres, device=device)
        scores_path, directions_path = find_reference_files(folder)
        if (scores_path is None or directions_path is None) and dataset:
            scores_path, directions_path = build_reference(model, folder / "demo", dataset, data_dir, progress)
        scores = examples = directions = None
        if scores_path is not None:
            scores, examples = read_test_scores(scores_path, model.config.image_shape)
        if directions_path is not None:
            try:
                directions = read_directions(directions_path, model)
            except ValueError:
                directions = None  # made for an earlier version of these weights: the page offers an upload
        return cls(model, str(checkpoint), scores, examples, directions, superres_model)


def _draws(n: Any, seed: Any) -> tuple[int, torch.Generator]:
    """The page's number of samples (1 to ``MAX_SAMPLES``) and a generator seeded with its seed."""
    if not (1 <= int(n) <= MAX_SAMPLES):
        raise DemoError(f"the number of samples must be 1 to {MAX_SAMPLES}")
    return int(n), torch.Generator().manual_seed(seed_number(seed))


def _check_models(model: Glow, name: str, superres: Glow | None = None) -> None:
    """``ValueError`` for a main model with a context, or a Super-resolve model that does not fit it."""
    if model.config.condition:
        raise ValueError(
            f"the demo explores models without a context; show {name} in the Super-resolve tab beside a model "
            f"of its images: glowtorch demo MODEL --superres {name}"
        )
    if superres is not None:
        config = superres.config
        if condition_kind(config.condition) != "lowres" or config.image_shape != model.config.image_shape:
            raise ValueError(
                f"the Super-resolve model must be conditioned on 'lowres:F' and model images of shape "
                f"{model.config.image_shape}"
            )


def _shipped(name: str) -> bool:
    from ..pretrained import pretrained_names

    return name.removeprefix("pretrained:") in pretrained_names()


def _histogram_base(scores: np.ndarray):
    """The histogram picture, a function from bits/dim to pixel column, and the plot's pixel rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    high = float(np.quantile(scores, 0.999))
    figure, axis = plt.subplots(figsize=(5.2, 2.4), dpi=100, constrained_layout=True)
    axis.hist(np.clip(scores, None, high * 1.5), bins=80, color="#4a7bd0")
    axis.set_xlim(float(scores.min()) * 0.9, high * 1.6)
    axis.set_xlabel("bits/dim (test set)")
    axis.set_yticks([])
    figure.canvas.draw()
    picture = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    height = picture.shape[0]
    x0, _ = axis.transData.transform((axis.get_xlim()[0], 0))
    x1, _ = axis.transData.transform((axis.get_xlim()[1], 0))
    low_x, high_x = axis.get_xlim()
    box = axis.get_window_extent()
    rows = (int(height - box.y1), int(height - box.y0))
    plt.close(figure)

    def to_column(value: float) -> float:
        value = min(max(value, low_x), high_x)
        return x0 + (value - low_x) / (high_x - low_x) * (x1 - x0)

    return picture, to_column, rows
