"""``glowtorch demo``: explore a model's latent space in the browser (Gradio, served locally, offline).

:class:`Explorer` holds what the page computes, with no Gradio in it: sampling, drawn or uploaded
digits brought to the model's input, exact reconstruction and likelihood, interpolation, editing along
attribute directions and, for class-conditional models, one image decoded under every label.
:func:`build_app` lays those out as a page. The model is loaded once; the test set's scores and the
attribute directions come with a shipped model, or are computed once from ``--dataset`` and cached in
the run or model folder (``demo/``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .checkpoint import load_model, resolve_checkpoint
from .data import DataError, _opened_image
from .images import make_grid
from .latent import (
    change_class,
    decode_images,
    encode_images,
    mix_latents,
    read_directions,
    write_directions,
)
from .metrics import nll_bits_per_dim
from .model import Glow
from .preprocess import dequantize, to_uint8

__all__ = ["DemoError", "Explorer", "build_app", "launch", "prepare_image"]

MAX_SAMPLES = 64
MAX_UPLOAD_PIXELS = 4096 * 4096
DISPLAY = 4  # each model pixel is shown as DISPLAY x DISPLAY screen pixels (nearest neighbour)
SCORES_FILE = "test_scores.safetensors"
DIRECTIONS_FILE = "directions.safetensors"


class DemoError(ValueError):
    """Input the page cannot use; its message is shown in the page."""


# --------------------------------------------------------------------------- input images
def _to_gray_on_black(array: np.ndarray) -> np.ndarray:
    """``(H, W)`` float in [0, 255]: a drawing or photo as white strokes on black, like MNIST. Transparent
    pixels count as background; a light background is inverted."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 4:  # RGBA: composite onto white (the pad's paper)
        alpha = array[..., 3:4].astype(np.float64) / 255.0
        array = array[..., :3] * alpha + 255.0 * (1.0 - alpha)
    if array.ndim == 3:
        array = array[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    gray = array.astype(np.float64)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return 255.0 - gray if np.median(border) > 127.5 else gray


def _digit_like(gray: np.ndarray, size: int) -> np.ndarray:
    """MNIST's normalization: the strokes' bounding box scaled to fit 20/28 of the side (aspect kept),
    then placed so that its centre of mass is the image's centre. ``(size, size)`` uint8."""
    from PIL import Image

    ink = gray > 0.1 * gray.max()
    rows, cols = np.nonzero(ink)
    crop = gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    box = max(1, round(size * 20 / 28))
    factor = box / max(crop.shape)
    height, width = max(1, round(crop.shape[0] * factor)), max(1, round(crop.shape[1] * factor))
    small = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((width, height), Image.Resampling.LANCZOS)
    small = np.asarray(small, dtype=np.float64)
    canvas = np.zeros((size + 2 * height, size + 2 * width))
    total = small.sum()
    cy = (small.sum(1) * np.arange(height)).sum() / total if total else height / 2
    cx = (small.sum(0) * np.arange(width)).sum() / total if total else width / 2
    top, left = round(height + size / 2 - cy), round(width + size / 2 - cx)
    canvas[top : top + height, left : left + width] = small
    return np.clip(canvas[height : height + size, width : width + size], 0, 255).round().astype(np.uint8)


def prepare_image(value: Any, image_shape: tuple[int, int, int]) -> tuple[Tensor, str]:
    """A drawing, upload or array as the model's input ``(C, H, W)`` uint8, and a note of what was done.

    ``value``: a file path, a PIL image, an ``(H, W[, C])`` array, or the drawing pad's dict (its
    ``composite``). An image already of the model's size and colour mode is taken as is, like a dataset
    image. Otherwise: grayscale models get MNIST's normalization (white on black, the strokes scaled into
    the central 20/28 and centred by mass); colour models a centre crop and resize. An empty drawing,
    a file that is not an image and an image over ``MAX_UPLOAD_PIXELS`` raise ``DemoError``.
    """
    from PIL import Image

    if isinstance(value, dict):
        value = value.get("composite")
    if value is None:
        raise DemoError("no image: draw a digit, upload an image or pick a test image")
    if isinstance(value, (str, Path)):
        try:
            with _opened_image(value) as image:
                if image.width * image.height > MAX_UPLOAD_PIXELS:
                    raise DemoError(f"the image is {image.width}x{image.height}: upload one under 4096x4096 pixels")
                image.load()
                value = image.copy()
        except DataError:
            raise DemoError("the upload is not a readable image: upload a PNG or JPEG") from None
    if isinstance(value, Image.Image):
        mode = value.mode
        value = np.asarray(
            value.convert(
                "RGBA" if "A" in mode or mode == "P" else ("L" if mode in ("1", "L", "I", "F", "I;16") else "RGB")
            )
        )
    array = np.asarray(value)
    if array.ndim not in (2, 3) or array.size == 0 or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise DemoError(f"expected an image, got an array of shape {array.shape}")
    if array.shape[0] * array.shape[1] > MAX_UPLOAD_PIXELS:
        raise DemoError(f"the image is {array.shape[1]}x{array.shape[0]}: use one under 4096x4096 pixels")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    channels, height, width = image_shape
    opaque = array.ndim == 2 or array.shape[2] == 3 or (array[..., 3] == 255).all()
    gray = array.ndim == 2 or (
        array.shape[2] >= 3 and (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    )
    if array.shape[:2] == (height, width) and opaque and (gray if channels == 1 else array.ndim == 3):
        plain = array if array.ndim == 2 else (array[..., 0] if channels == 1 else array[..., :3])
        tensor = torch.from_numpy(np.ascontiguousarray(plain))
        return (tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1)).contiguous(), "used as is"
    source = f"{array.shape[1]}x{array.shape[0]}"
    if channels == 1:
        strokes = _to_gray_on_black(array)
        if strokes.max() - strokes.min() < 16:
            raise DemoError("the drawing is empty: draw a digit (or upload an image with something on it)")
        digit = _digit_like(strokes, height) if height == width else None
        if digit is None:
            digit = np.asarray(Image.fromarray(strokes.astype(np.uint8)).resize((width, height)))
        return torch.from_numpy(digit.copy()).unsqueeze(0), f"{source} brought to {width}x{height} grayscale, centred"
    rgb = Image.fromarray(array if array.ndim == 2 else array[..., :3]).convert("RGB")
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    rgb = rgb.crop((left, top, left + side, top + side)).resize((width, height), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1), f"{source} centre-cropped to {width}x{height}"


def show(images: Tensor, columns: int | None = None) -> np.ndarray:
    """uint8 images ``(N, C, H, W)`` as one display array, each pixel enlarged ``DISPLAY`` times."""
    grid = make_grid(images.cpu(), columns, padding=1 if len(images) > 1 else 0)
    return grid.repeat(DISPLAY, axis=0).repeat(DISPLAY, axis=1)


# --------------------------------------------------------------------------- the explorer
@dataclass
class Reading:
    """What the page says of one image: its reconstruction, bits/dim and place among the test scores."""

    image: Tensor
    reconstruction: Tensor
    bits_per_dim: float
    percentile: float | None
    verdict: str


class Explorer:
    """A model and what the page needs of it, computed once.

    Args:
        model: the model (eval mode).
        name: how the page names it.
        test_scores: ``(N,)`` per-image test-set bits/dim (for the in/out-of-distribution reading), or None.
        examples: ``(M, C, H, W)`` uint8 test images to pick from, or None.
        directions: ``{attribute: [per-level latent]}`` for the edit sliders, or None.
    """

    def __init__(
        self,
        model: Glow,
        name: str,
        test_scores: Tensor | None = None,
        examples: Tensor | None = None,
        directions: dict[str, list[Tensor]] | None = None,
    ) -> None:
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
        classes = self.model.config.num_classes
        if label is None or not (0 <= int(label) < classes) or int(label) != label:
            raise DemoError(f"pick a class from 0 to {classes - 1}")
        return torch.full((n,), int(label), dtype=torch.long)

    # ----------------------------------------------------------------- sample
    def sample(
        self, temperature: float, seed: int = 0, label: int | None = None, n: int = 32,
        level_temperatures: str = "",
    ) -> Tensor:  # fmt: skip
        """``n`` samples ``(n, C, H, W)`` uint8 at ``temperature`` in [0, 1] (or per level: a comma-separated
        list, finest level first, overriding it)."""
        temperatures: float | list[float] = _unit_number(temperature, "temperature")
        if level_temperatures and level_temperatures.strip():
            try:
                values = [float(v) for v in level_temperatures.split(",") if v.strip()]
            except ValueError:
                raise DemoError(f"per-level temperatures are {self.levels} numbers separated by commas") from None
            if len(values) != self.levels:
                raise DemoError(f"give {self.levels} per-level temperatures (finest first), got {len(values)}")
            temperatures = [_unit_number(v, "each per-level temperature") for v in values]
        if not (1 <= int(n) <= MAX_SAMPLES):
            raise DemoError(f"the number of samples must be 1 to {MAX_SAMPLES}")
        seed = int(_finite(seed, "seed"))
        y = self._label(label, int(n))
        with torch.inference_mode():
            x = self.model.sample(int(n), temperatures, y=y, generator=torch.Generator().manual_seed(seed))
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
        """Exact reconstruction, bits/dim (mean of 4 fixed dequantization draws) and where it falls
        among the test set's scores."""
        y = self._label(label)
        reconstruction = decode_images(self.model, self.latents(image, label), y)[0]
        noise = torch.rand((4, *image.shape), generator=torch.Generator().manual_seed(0))
        x = dequantize(image.expand(4, *image.shape), self.model.config.n_bits, noise=noise)
        with torch.inference_mode():
            log_p = self.model.log_prob(x.to(self.model.top_prior), None if y is None else y.expand(4))
        config = self.model.config
        bpd = nll_bits_per_dim(log_p.double(), config.num_dims, config.n_bits).mean().item()
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

    # ----------------------------------------------------------------- interpolate
    def interpolate(
        self, a: Tensor, b: Tensor, t: float, method: str = "linear", label: int | None = None, steps: int = 9
    ) -> tuple[Tensor, Tensor]:
        """The image at ``t`` in [0, 1] on the path from ``a`` to ``b``, and the whole path in ``steps`` images."""
        return self.frame(a, b, t, method, label), self.path(a, b, method, label, steps)

    def frame(self, a: Tensor, b: Tensor, t: float, method: str = "linear", label: int | None = None) -> Tensor:
        """The image at ``t`` in [0, 1] on the linear or spherical ("slerp") latent path from ``a`` to ``b``."""
        return self.path(a, b, method, label, positions=[_unit_number(t, "the position on the path")])[0]

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
            amount = _finite(amount, f"the amount of {name}")
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
        device: str = "cpu", progress: bool = True,
    ) -> Explorer:  # fmt: skip
        """The explorer of a run folder, model folder or ``pretrained:NAME``. Test-set scores, a few test
        images and class or attribute directions come from the model folder (``test_scores.safetensors``
        and ``directions.safetensors`` beside the weights, as shipped models have them, or ``demo/``), else
        are computed from ``dataset`` once and cached in ``demo/`` beside the weights."""
        folder = resolve_checkpoint(checkpoint)
        model = load_model(folder, device=device).eval()
        found = [folder, folder / "demo"]
        scores_path = next((p / SCORES_FILE for p in found if (p / SCORES_FILE).is_file()), None)
        directions_path = next((p / DIRECTIONS_FILE for p in found if (p / DIRECTIONS_FILE).is_file()), None)
        if (scores_path is None or directions_path is None) and dataset:
            scores_path, directions_path = build_cache(model, folder / "demo", dataset, data_dir, progress)
        scores = examples = directions = None
        if scores_path is not None:
            scores, examples = read_test_scores(scores_path)
        if directions_path is not None:
            try:
                directions = read_directions(directions_path, model)
            except ValueError:
                directions = None  # made for an earlier version of these weights: the page offers an upload
        return cls(model, str(checkpoint), scores, examples, directions)


def _unit_number(value: Any, what: str) -> float:
    value = _finite(value, what)
    if not 0.0 <= value <= 1.0:
        raise DemoError(f"{what} must be between 0 and 1, got {value:g}")
    return value


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{what} must be a number") from None
    if not math.isfinite(number):
        raise DemoError(f"{what} must be a finite number")
    return number


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


# --------------------------------------------------------------------------- the cache
def write_test_scores(path: Path, scores: Tensor, examples: Tensor, source: str) -> Path:
    """Per-image test bits/dim ``(N,)`` and example test images ``(M, C, H, W)`` uint8 in one safetensors file."""
    from .latent import save_latents

    return save_latents(
        path, {"bits_per_dim": scores.float(), "examples": examples}, {"glowtorch": "test scores", "source": source}
    )


def read_test_scores(path: Path) -> tuple[Tensor, Tensor]:
    from .latent import load_latents

    tensors, _ = load_latents(path)
    return tensors["bits_per_dim"], tensors["examples"]


def build_cache(
    model: Glow, folder: Path, dataset: str, data_dir: str | None, progress: bool = True, scores: Tensor | None = None
) -> tuple[Path, Path | None]:
    """Scores ``dataset``'s test split (unless its ``scores`` are given) and computes class (or attribute)
    directions from its training split, once; written to ``folder``."""
    from .data import load_dataset_for
    from .evaluate import score_images
    from .latent import attribute_directions

    test = load_dataset_for(model.config.image_shape, dataset, data_dir, train=False)
    labels = test.labels if model.config.num_classes else None
    if scores is None:
        scores = score_images(model, test.images, labels, progress=progress).bits_per_dim
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:32]
    folder.mkdir(parents=True, exist_ok=True)
    scores_path = write_test_scores(folder / SCORES_FILE, scores, test.images[order].clone(), f"{dataset} test split")
    train = load_dataset_for(model.config.image_shape, dataset, data_dir, train=True)
    try:
        names, table = train.attribute_table()
    except DataError:  # neither labels nor attributes: no edit sliders
        return scores_path, None
    limit = min(len(train), 10000)
    images, table = train.images[:limit], table[:limit]
    labels = train.labels[:limit] if model.config.num_classes and train.labels is not None else None
    directions = attribute_directions(model, images, table.bool(), labels)
    return scores_path, write_directions(folder / DIRECTIONS_FILE, model, directions, names, dataset)


# --------------------------------------------------------------------------- the page
MAX_SLIDERS = 40
OFFLINE_THEME_FONTS = (["ui-sans-serif", "system-ui", "sans-serif"], ["ui-monospace", "monospace"])


def _guarded(function, outputs: int):
    """``function``'s results plus an empty message, or unchanged outputs and the ``DemoError``'s message:
    bad input is answered in the page and the app keeps serving."""
    import gradio as gr

    def run(*args):
        try:
            result = function(*args)
        except DemoError as error:
            return (*[gr.update() for _ in range(outputs)], f"**{error}**")
        result = result if isinstance(result, tuple) else (result,)
        return (*result, "")

    return run


def build_app(explorer: Explorer):
    """The page: Sample, Draw or upload, Interpolate and Edit tabs around one ``Explorer``."""
    import gradio as gr

    model, examples = explorer.model, explorer.examples
    classes = list(range(model.config.num_classes))
    picks = [f"test image {i}" for i in range(0 if examples is None else len(examples))]

    def image_of(state) -> Tensor:
        if state is None:
            raise DemoError("no image chosen yet: draw, upload or pick one in the Draw or upload tab")
        return torch.from_numpy(np.asarray(state, dtype=np.uint8))

    def pick(choice: str | None) -> Tensor:
        if not choice or choice not in picks:
            raise DemoError("pick a test image")
        return examples[picks.index(choice)]

    with gr.Blocks(title=f"glowtorch: {explorer.name}", analytics_enabled=False) as app:
        gr.Markdown(f"## glowtorch · `{explorer.name}`\nGlow's latent space: every image below is computed exactly "
                    f"(encode, then decode, gives the same pixels back).")  # fmt: skip
        current = gr.State(None)  # the chosen image, (C, H, W) uint8 as a nested list
        label = gr.Dropdown(classes, value=0 if classes else None, label="class", visible=bool(classes),
                            elem_id="label")  # fmt: skip

        with gr.Tab("Sample"):
            with gr.Row():
                temperature = gr.Slider(0, 1, value=0.7, step=0.05, label="temperature", elem_id="temperature")
                seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
            per_level = gr.Textbox(label=f"per-level temperatures ({explorer.levels} values, finest first; "
                                   "overrides the slider when given)", elem_id="per-level")  # fmt: skip
            sample_button = gr.Button("Sample", variant="primary", elem_id="sample")
            samples = gr.Image(label="samples", type="numpy", format="png", elem_id="samples", interactive=False)
            sample_message = gr.Markdown(elem_id="sample-message")

        with gr.Tab("Draw or upload"):
            with gr.Row():
                pad = gr.Sketchpad(label="draw a digit", type="numpy", image_mode="RGBA", canvas_size=(280, 280),
                                   elem_id="pad")  # fmt: skip
                # A file, not an image component: what is not an image reaches prepare_image, which says so.
                upload = gr.File(label="or upload an image (PNG, JPEG, ...)", type="filepath", elem_id="upload")
            with gr.Row():
                read_button = gr.Button("Read the drawing", variant="primary", elem_id="read")
                picked = gr.Dropdown(picks, label="or pick a test image", elem_id="pick")
            with gr.Row():
                shown = gr.Image(label="model input", format="png", interactive=False, elem_id="input")
                reconstruction = gr.Image(label="exact reconstruction", format="png", interactive=False,
                                          elem_id="reconstruction")  # fmt: skip
                histogram = gr.Image(label="its bits/dim among the test set's", format="png", interactive=False,
                                     elem_id="histogram")  # fmt: skip
            reading = gr.Markdown(elem_id="reading")
            read_message = gr.Markdown(elem_id="read-message")

        with gr.Tab("Interpolate"):
            ends = ["the chosen image", *picks]
            with gr.Row():
                end_a = gr.Dropdown(ends, value=ends[1] if len(ends) > 1 else ends[0], label="from", elem_id="from")
                end_b = gr.Dropdown(ends, value=ends[2] if len(ends) > 2 else ends[0], label="to", elem_id="to")
                method = gr.Radio(["linear", "slerp"], value="slerp", label="path", elem_id="method")
            position = gr.Slider(0, 1, value=0.5, step=0.05, label="position on the path", elem_id="position")
            with gr.Row():
                frame = gr.Image(label="at this position", format="png", interactive=False, elem_id="frame")
                strip = gr.Image(label="the path", format="png", interactive=False, elem_id="strip")
            path_message = gr.Markdown(elem_id="path-message")

        with gr.Tab("Edit"):
            gr.Markdown("Move the chosen image (Draw or upload tab) along each direction: the mean latent of "
                        "images with an attribute (for MNIST: a digit) minus that of images without it.")  # fmt: skip
            names = list(explorer.directions)
            with gr.Row():
                with gr.Column(scale=2):
                    sliders = [
                        gr.Slider(
                            -3,
                            3,
                            value=0,
                            step=0.1,
                            label=names[i] if i < len(names) else f"direction {i}",
                            visible=i < len(names),
                            elem_id=f"direction-{i}",
                        )  # fmt: skip
                        for i in range(MAX_SLIDERS)
                    ]
                with gr.Column(scale=1):
                    edited = gr.Image(label="edited", format="png", interactive=False, elem_id="edited")
                    relabel_button = gr.Button("Same handwriting, another digit", visible=bool(classes),
                                               elem_id="relabel")  # fmt: skip
                    relabelled = gr.Image(label="decoded under each class", format="png", interactive=False,
                                          visible=bool(classes), elem_id="relabelled")  # fmt: skip
            directions_file = gr.File(label="another directions file (glowtorch directions)", height=120,
                                      elem_id="directions-file")  # fmt: skip
            edit_message = gr.Markdown(elem_id="edit-message")

        # ------------------------------------------------------------- actions
        def do_sample(t, s, levels, y):
            return show(explorer.sample(t, s, y, 32, levels), columns=8)

        def do_read(value, y):
            image, note = explorer.prepare(value)
            result = explorer.read(image, y)
            text = f"**{result.bits_per_dim:.3f} bits/dim** ({note}): {result.verdict}"
            picture = explorer.histogram(result.bits_per_dim) if explorer.test_scores is not None else None
            return image.numpy().tolist(), show(image.unsqueeze(0)), show(result.reconstruction.unsqueeze(0)), \
                picture, text  # fmt: skip

        def do_upload(path, y):  # the file box is emptied after each upload, ready for the next one
            try:
                return (*do_read(path, y), None, "")
            except DemoError as error:
                return (*[gr.update() for _ in range(5)], None, f"**{error}**")

        def do_pick(choice, y):
            return do_read(pick(choice).permute(1, 2, 0).numpy().squeeze(-1) if model.config.image_shape[0] == 1
                           else pick(choice).permute(1, 2, 0).numpy(), y)  # fmt: skip

        def end(choice, state) -> Tensor:
            return image_of(state) if choice == "the chosen image" else pick(choice)

        def do_path(a, b, how, t, state, y):
            at, path = explorer.interpolate(end(a, state), end(b, state), t, how, y)
            return show(at.unsqueeze(0)), show(path, columns=len(path))

        def do_frame(a, b, how, t, state, y):
            return show(explorer.frame(end(a, state), end(b, state), t, how, y).unsqueeze(0))

        def do_edit(state, y, *amounts):
            names = list(explorer.directions)
            if not names:
                raise DemoError("no directions: upload a directions file made for this model")
            return show(explorer.edit(image_of(state), dict(zip(names, amounts, strict=False)), y).unsqueeze(0))

        def do_directions(file):
            if file is None:
                raise DemoError("no file")
            names = explorer.load_directions(file if isinstance(file, str) else file.name)
            return tuple(gr.update(label=names[i] if i < len(names) else f"direction {i}", value=0,
                                   visible=i < len(names)) for i in range(MAX_SLIDERS))  # fmt: skip

        def do_relabel(state, y):
            return show(explorer.relabel(image_of(state), y), columns=len(classes))

        sample_inputs = [temperature, seed, per_level, label]
        sample_button.click(_guarded(do_sample, 1), sample_inputs, [samples, sample_message])
        read_outputs = [current, shown, reconstruction, histogram, reading, read_message]
        read_button.click(_guarded(do_read, 5), [pad, label], read_outputs)
        upload.upload(do_upload, [upload, label], [*read_outputs[:-1], upload, read_message])
        picked.input(_guarded(do_pick, 5), [picked, label], read_outputs)
        path_inputs = [end_a, end_b, method, position, current, label]
        for trigger in (end_a.input, end_b.input, method.input, position.release):
            trigger(_guarded(do_path, 2), path_inputs, [frame, strip, path_message])
        position.change(_guarded(do_frame, 1), path_inputs, [frame, path_message], trigger_mode="always_last")
        edit_inputs = [current, label, *sliders]
        for slider in sliders:
            slider.change(_guarded(do_edit, 1), edit_inputs, [edited, edit_message], trigger_mode="always_last")
        directions_file.upload(_guarded(do_directions, MAX_SLIDERS), directions_file, [*sliders, edit_message])
        relabel_button.click(_guarded(do_relabel, 1), [current, label], [relabelled, edit_message])
        app.load(_guarded(do_sample, 1), sample_inputs, [samples, sample_message])
        app.load(_guarded(do_path, 2), path_inputs, [frame, strip, path_message])
    return app


def launch(explorer: Explorer, host: str = "127.0.0.1", port: int = 7860, quiet: bool = False) -> None:
    """Serves the page until Ctrl-C, on ``host`` only (127.0.0.1: this machine), with nothing fetched from
    outside: no analytics, fonts from the system, uploads capped at 10 MB.

    SIGINT stops it even where the process started with SIGINT ignored (a shell's background job does
    that to its commands, and Python then never raises KeyboardInterrupt)."""
    import os
    import signal

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    theme = gr.themes.Default(font=OFFLINE_THEME_FONTS[0], font_mono=OFFLINE_THEME_FONTS[1])
    app = build_app(explorer)
    app.queue(default_concurrency_limit=1)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    app.launch(server_name=host, server_port=port, theme=theme, quiet=quiet, share=False, max_file_size="10mb",
               footer_links=[], show_error=False)  # fmt: skip
