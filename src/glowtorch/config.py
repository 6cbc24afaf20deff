"""A model's configuration: what it is (``GlowConfig``, saved as ``config.json``) and how it computes
(``ComputeConfig``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .context import condition_kind, context_from_lowres, context_shape, lowres_factor, lowres_images
from .couplings import COUPLINGS
from .dequantization import DEQUANTIZATIONS
from .layers import COUPLING_NETWORKS, PERMUTATIONS
from .memory import MEMORY_MODES
from .validation import MAX_FLOW_STEPS, check_allocation, check_field_types, dataclass_from_dict

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}
CLASS_PRIORS = ("channel", "spatial")

__all__ = ["CLASS_PRIORS", "PRECISIONS", "ComputeConfig", "GlowConfig"]


@dataclass(frozen=True)
class GlowConfig:
    """Architecture of a Glow model: what it is, saved as ``config.json`` (how it computes is a
    ``ComputeConfig``, set with ``Glow.set_compute``).

    Attributes:
        image_shape: (C, H, W) of the model's input; H and W divisible by 2**levels.
        levels: L, the number of scales (squeeze -> steps -> split).
        depth: K, steps of flow per level.
        hidden_channels: width of the coupling networks.
        coupling: "affine", "additive" or "spline" (rational-quadratic splines, ``glowtorch.splines``).
        permutation: "lu" (LU 1x1 conv), "invconv" (plain 1x1 conv), "shuffle" or "reverse".
        learn_top: learn the top prior's mean and log-std (zero-initialized).
        num_classes: > 0 makes the model class-conditional (top prior and latent classifier).
        class_prior: how the class enters the top prior: "channel" adds a per-class shift of each
            channel's mean and log-std, the same at every position (the paper's code); "spatial" gives
            each class its own mean and log-std at every position of the top latent.
        n_bits: bits per pixel value the data is reduced to (1..8).
        coupling_network: the coupling networks' hidden convolutions: "actnorm" (no bias, each followed by
            ActNorm: the paper's code, the default) or "bias" (with biases and no ActNorm, as in
            rosinality/glow-pytorch; for converted models).
        zero_conv_padding: the value the zero-initialized output convolutions (coupling networks and
            priors) pad their input with: 0 (the paper's code, the default) or 1 (rosinality/glow-pytorch).
        condition: "" (unconditional), or what the model is conditioned on (``glowtorch.context``):
            "lowres:F" (the image average-pooled by F: super-resolution) or "tensor:C,H,W" (any context of
            that shape, given by the user). Every model method then takes ``context``.
        context_features: width of the context encoder, and the learned feature channels it hands each level.
        dequantization: "uniform" (noise uniform in each pixel's bin, the paper's) or "variational" (a
            learned q(u | x), Flow++: ``glowtorch.dequantization``), used for likelihoods only.
        dequantizer_channels, dequantizer_depth: width and coupling layers of the variational q.
    """

    image_shape: tuple[int, int, int] = (3, 32, 32)
    levels: int = 3
    depth: int = 32
    hidden_channels: int = 512
    coupling: str = dataclasses.field(default="affine", metadata={"choices": tuple(COUPLINGS)})
    permutation: str = dataclasses.field(default="lu", metadata={"choices": tuple(PERMUTATIONS)})
    learn_top: bool = True
    num_classes: int = 0
    class_prior: str = dataclasses.field(default="channel", metadata={"choices": CLASS_PRIORS})
    n_bits: int = 8
    coupling_network: str = dataclasses.field(default="actnorm", metadata={"choices": COUPLING_NETWORKS})
    zero_conv_padding: float = 0.0
    condition: str = ""
    context_features: int = 32
    dequantization: str = dataclasses.field(default="uniform", metadata={"choices": DEQUANTIZATIONS})
    dequantizer_channels: int = 16
    dequantizer_depth: int = 2

    # Written by glowtorch 0.1.0 into config.json beside the architecture; read and ignored.
    LEGACY_COMPUTE_KEYS = ("memory", "precision", "channels_last", "fold_actnorm")

    def __post_init__(self) -> None:
        for name, value in check_field_types(GlowConfig, dataclasses.asdict(self)).items():
            object.__setattr__(self, name, value)  # integers stay integers (no 4.5 bits), tuples stay tuples
        if min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {self.image_shape}")
        for name in ("levels", "depth", "hidden_channels", "dequantizer_channels", "dequantizer_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        _, height, width = self.image_shape
        factor = f"2**levels = {2**self.levels}" if self.levels <= 32 else f"2**{self.levels}"
        if self.levels >= min(height, width).bit_length() or height % 2**self.levels or width % 2**self.levels:
            raise ValueError(
                f"image height and width must be divisible by {factor}, got {height}x{width}; "
                "pad or resize the images, or use fewer levels"
            )
        if self.levels * self.depth > MAX_FLOW_STEPS:
            raise ValueError(
                f"levels x depth = {self.levels * self.depth:,} steps of flow, more than glowtorch builds "
                f"({MAX_FLOW_STEPS:,}); check levels and depth"
            )
        if self.coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {sorted(COUPLINGS)}, got {self.coupling!r}")
        if self.permutation not in PERMUTATIONS:
            raise ValueError(f"permutation must be one of {sorted(PERMUTATIONS)}, got {self.permutation!r}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.class_prior not in CLASS_PRIORS:
            raise ValueError(f"class_prior must be one of {', '.join(CLASS_PRIORS)}, got {self.class_prior!r}")
        if self.coupling_network not in COUPLING_NETWORKS:
            raise ValueError(
                f"coupling_network must be one of {', '.join(COUPLING_NETWORKS)}, got {self.coupling_network!r}"
            )
        if not math.isfinite(self.zero_conv_padding):
            raise ValueError(f"zero_conv_padding must be a finite number, got {self.zero_conv_padding}")
        if not 1 <= self.n_bits <= 8:
            raise ValueError(f"n_bits must be between 1 and 8, got {self.n_bits}")
        context_shape(self.condition, self.image_shape)  # refuses a malformed condition
        if self.context_features < 1:
            raise ValueError(f"context_features must be >= 1, got {self.context_features}")
        if self.dequantization not in DEQUANTIZATIONS:
            raise ValueError(f"dequantization must be one of {', '.join(DEQUANTIZATIONS)}, got {self.dequantization!r}")

    @property
    def context_shape(self) -> tuple[int, int, int] | None:
        """``(C_c, h, w)`` of the model's context, None for an unconditional model."""
        return context_shape(self.condition, self.image_shape)

    def context_of(self, images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """The context of uint8 ``images`` ``(B, C, H, W)`` for a built-in condition ("lowres:F"):
        ``(B, C, H/F, W/F)`` in model space. ``ValueError`` for other models."""
        if condition_kind(self.condition) != "lowres":
            what = f"is conditioned on {self.condition!r}: pass its context" if self.condition else "has no context"
            raise ValueError(f"the model {what}; only 'lowres:F' contexts are made from the images")
        lowres = lowres_images(images, lowres_factor(self.condition), self.n_bits)
        return context_from_lowres(lowres, self.n_bits, dtype)

    def parameter_estimate(self) -> int:
        """About how many parameters the model has (an upper estimate from the configuration alone: the
        coupling networks, 1x1 convolutions and priors), so its size can be checked before it is built."""
        channels, height, width = self.image_shape
        context = (self.context_shape[0] + 2 * self.context_features) if self.condition else 0
        width_h, total = self.hidden_channels, 0
        for _ in range(self.levels):
            channels, height, width = channels * 4, height // 2, width // 2
            step = 9 * width_h * (channels + context) + width_h * width_h + 9 * width_h * channels
            step += channels * channels + 4 * (width_h + channels)
            total += self.depth * step + 9 * (channels + context) * channels * 2
            channels //= 2
        top = 2 * channels * 2 * (height * width + max(self.num_classes, 1) * (1 + height * width))
        return total + top + 9 * self.context_features * (context + self.context_features) * self.levels

    def check_size(self, batch: int = 0, what: str = "the model") -> None:
        """``ValueError`` before anything is built when the model's weights (four copies: weights, gradient
        and the optimizer's two moments) and ``batch`` images' activations would not fit in this machine's
        memory (a ``config.json`` asking for a width of 10**7, or a sample of 10**8 images)."""
        c, h, w = self.image_shape
        per_image = 16 * max(self.hidden_channels, 4 * c) * (h // 2) * (w // 2)  # a few float32 feature maps
        overhead = 20_000 * self.levels * self.depth  # Python objects of each step's modules
        need = 16 * self.parameter_estimate() + overhead + batch * per_image
        check_allocation(need, what, "check the config's widths and depth, or ask for fewer images")

    @property
    def num_dims(self) -> int:
        """D = C * H * W."""
        c, h, w = self.image_shape
        return c * h * w

    def check_class(self, label: int | float | None, what: str = "the class") -> int:
        """``label`` as a class number of this class-conditional model; ``ValueError`` (naming it ``what``)
        for an unconditional model or a label that is not one of its classes."""
        if self.num_classes == 0:
            raise ValueError(f"{what} needs a class-conditional model (trained with --conditional)")
        try:
            number = int(label)
        except (TypeError, ValueError, OverflowError):
            number = None
        if number is None or number != label or not 0 <= number < self.num_classes:
            raise ValueError(f"{what}: pick a class from 0 to {self.num_classes - 1} (got {label})")
        return number

    def check_label_range(self, labels: Tensor) -> None:
        """``ValueError`` when integer ``labels`` ``(N,)`` are not all classes of this model."""
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels run from {int(labels.min())} to {int(labels.max())}, but the model has classes 0 to "
                f"{self.num_classes - 1}: use the labels it was trained with"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GlowConfig:
        """The config of a ``config.json``; the compute keys that older versions wrote there are ignored."""
        return dataclass_from_dict(cls, values, "GlowConfig fields", ignore=cls.LEGACY_COMPUTE_KEYS)


@dataclass(frozen=True)
class ComputeConfig:
    """How a model computes, never what: free to change between runs and after loading.

    Attributes:
        memory: how training backprop stores activations: "standard", "checkpoint" (per step) or
            "reversible" (none: rebuilt from the outputs with the inverse). Results are the same.
        precision: "float32", or "bfloat16" for the coupling networks only (autocast); ActNorm, the
            1x1 convolutions, logdets and priors stay in the model's dtype.
        channels_last: keep convolution weights and activations in NHWC memory order (faster
            convolutions on CPU, measured by ``benchmarks/bench_speed.py``). Results are the same.
    """

    memory: str = dataclasses.field(default="standard", metadata={"choices": MEMORY_MODES})
    precision: str = dataclasses.field(default="float32", metadata={"choices": tuple(PRECISIONS)})
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {', '.join(MEMORY_MODES)}, got {self.memory!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
