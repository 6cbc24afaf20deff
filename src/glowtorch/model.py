"""The multi-scale Glow model (Kingma & Dhariwal 2018, Figure 2b); its configuration is in ``config``."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PRECISIONS, ComputeConfig, GlowConfig
from .context import ContextEncoder
from .couplings import COUPLINGS
from .dequantization import VariationalDequantizer
from .layers import (
    ActNorm,
    FlowSequence,
    FlowStep,
    Split,
    Squeeze,
    ZeroConv2d,
    gaussian_log_prob,
)
from .memory import run_steps

__all__ = ["ComputeConfig", "Glow", "GlowConfig", "NotInitializedError"]


class NotInitializedError(RuntimeError):
    """Raised when a model is used before its ActNorm layers were initialized."""


class Glow(nn.Module):
    """Glow: L levels of [squeeze -> K x (ActNorm -> permutation -> coupling) -> split].

    Inputs ``x`` are ``(B, C, H, W)`` floats in [-0.5, 0.5) (see ``glowtorch.preprocess``).
    Latents ``zs`` are a list with one tensor per level, finest first; the last is the top latent.
    How it computes (memory mode, precision, layout) is ``self.compute``, changed with ``set_compute``.
    """

    def __init__(self, config: GlowConfig, compute: ComputeConfig | None = None) -> None:
        super().__init__()
        config.check_size()
        self.config = config
        channels, height, width = config.image_shape
        self.levels = nn.ModuleList()
        self.splits = nn.ModuleList()
        self.latent_shapes: list[tuple[int, int, int]] = []
        self.squeeze = Squeeze()
        sizes = [(height // 2 ** (level + 1), width // 2 ** (level + 1)) for level in range(config.levels)]
        shape = config.context_shape
        # In this order (after the flow's own modules: an unconditional model's parameters keep their order).
        encoder = ContextEncoder(shape[0], config.context_features, sizes) if shape else None
        context_channels = encoder.out_channels if encoder else 0
        for level in range(config.levels):
            channels, height, width = channels * 4, height // 2, width // 2
            steps = [
                FlowStep(
                    channels,
                    config.hidden_channels,
                    COUPLINGS[config.coupling],
                    config.permutation,
                    config.coupling_network,
                    config.zero_conv_padding,
                    context_channels,
                )  # fmt: skip
                for _ in range(config.depth)
            ]
            self.levels.append(FlowSequence(steps))
            if level < config.levels - 1:
                split = Split(channels, config.zero_conv_padding, context_channels)
                self.splits.append(split)
                self.latent_shapes.append((channels // 2, height, width))
                channels = split.kept_channels
        self.latent_shapes.append((channels, height, width))
        self.top_channels = channels
        self._compiled_decode = None
        self._compiled_sample = None
        # Top prior: (mean, log_std) interleaved on the channel axis, zero at init = standard normal.
        self.top_prior = nn.Parameter(torch.zeros(1, 2 * channels, height, width), requires_grad=config.learn_top)
        if config.num_classes > 0:
            per_class = 2 * channels * (height * width if config.class_prior == "spatial" else 1)
            self.label_prior = nn.Linear(config.num_classes, per_class)
            self.classifier = nn.Linear(channels, config.num_classes)
            for linear in (self.label_prior, self.classifier):
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
        if encoder is not None:
            self.context_encoder = encoder
            # The top prior's shift and log-std change from the top level's context features (zero at init).
            self.context_prior = ZeroConv2d(context_channels, 2 * channels, pad_value=config.zero_conv_padding)
        if config.dequantization == "variational":  # last: the other parameters keep their order
            self.dequantizer = VariationalDequantizer(
                config.image_shape[0], config.n_bits, config.dequantizer_channels, config.dequantizer_depth
            )
        self.compute = compute or ComputeConfig()
        self._lay_out_weights()
        self.set_compute()

    def flow_steps(self) -> list[FlowStep]:
        """Every step of flow, finest level first."""
        return [step for level in self.levels for step in level.layers]

    def set_compute(
        self, memory: str | None = None, precision: str | None = None, channels_last: bool | None = None
    ) -> Glow:
        """Changes how the model computes (see ``ComputeConfig``; None keeps a setting); returns the model.

        Results stay the same up to float rounding (bfloat16 rounds more); the weights' values are unchanged
        (a new ``channels_last`` re-lays them out: do it before creating an optimizer).
        """
        changes = {"memory": memory, "precision": precision, "channels_last": channels_last}
        before = self.compute
        self.compute = dataclasses.replace(self.compute, **{k: v for k, v in changes.items() if v is not None})
        for step in self.flow_steps():
            step.coupling.set_network_dtype(PRECISIONS[self.compute.precision])
        if self.compute.channels_last != before.channels_last:
            self._lay_out_weights()
        return self

    @contextlib.contextmanager
    def full_precision(self) -> Iterator[Glow]:
        """For the duration, the coupling networks compute in the model's own dtype (float32 or float64), not
        bfloat16: every likelihood glowtorch reports, and the exact latent paths (whose inverse must see the
        forward's network output up to float32 rounding), are computed so. The setting is restored after."""
        precision = self.compute.precision
        self.set_compute(precision="float32")
        try:
            yield self
        finally:
            self.set_compute(precision=precision)

    def _lay_out_weights(self) -> None:
        """Convolution weights in the memory order of ``self.compute.channels_last``."""
        layout = torch.channels_last if self.compute.channels_last else torch.contiguous_format
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # A fresh tensor with the layout's own strides: ``.contiguous()`` keeps a 1x1 kernel's
                # strides (it is contiguous either way), and its gradient, laid out by the convolution,
                # would then differ from the weight (DistributedDataParallel copies such gradients).
                module.weight.data = torch.empty_like(module.weight, memory_format=layout).copy_(module.weight)

    # ----------------------------------------------------------------- checks
    def actnorms(self) -> list[ActNorm]:
        return [m for m in self.modules() if isinstance(m, ActNorm)]

    @property
    def is_initialized(self) -> bool:
        return all(bool(a.initialized) for a in self.actnorms())

    def _require_initialized(self) -> None:
        if not self.is_initialized:
            raise NotInitializedError(
                "the model's ActNorm layers are not initialized: call model.initialize(x) on a batch of data "
                "first, or load a trained checkpoint"
            )

    def _check_input(self, x: Tensor, data_range: bool = False) -> None:
        """Shape, a float dtype and finite values; with ``data_range`` also values in [-0.5, 0.5].

        A flow is a bijection of all of R^D, so ``encode``, ``log_prob`` and the training pass take any
        finite float input (a sample or an edited image may leave the data range). Integer images are
        the usual mistake of passing pixels without ``dequantize`` and are refused with that hint.
        """
        expected = self.config.image_shape
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"expected float images in [-0.5, 0.5), got dtype {x.dtype}: convert pixels with glowtorch.dequantize"
            )
        low, high = torch.aminmax(x.detach())
        if not (torch.isfinite(low) and torch.isfinite(high)):
            raise ValueError("input contains NaN or infinite values")
        if data_range and (low < -0.5 or high > 0.5):
            raise ValueError(
                f"initialization data must lie in [-0.5, 0.5], got {low.item():.3g}..{high.item():.3g}; "
                "convert uint8 images with glowtorch.dequantize"
            )

    def layout(self, x: Tensor) -> Tensor:
        """``x`` in the memory order the model computes in (NHWC with ``channels_last``)."""
        return x.contiguous(memory_format=torch.channels_last) if self.compute.channels_last else x

    def _check_labels(self, y: Tensor | None, batch: int) -> Tensor | None:
        if self.config.num_classes == 0:
            if y is not None:
                raise ValueError("this model is not class-conditional (num_classes=0): do not pass y")
            return None
        if y is None:
            raise ValueError(f"this model is class-conditional ({self.config.num_classes} classes): pass labels y")
        y = torch.as_tensor(y, device=self.top_prior.device)
        if y.dim() == 0:
            y = y.expand(batch)
        if y.shape != (batch,) or y.is_floating_point():
            raise ValueError(f"y must be {batch} integer labels, got shape {tuple(y.shape)} dtype {y.dtype}")
        self.config.check_label_range(y)
        return y

    def _check_context(self, context: Tensor | None, batch: int) -> Tensor | None:
        """``context`` ``(B or 1, C_c, h, w)`` checked and expanded to ``batch`` rows, in the model's dtype and
        device; None for an unconditional model. One-line ``ValueError`` for a missing or wrong context."""
        shape = self.config.context_shape
        if shape is None:
            if context is not None:
                raise ValueError("this model has no context (it was trained without --condition): do not pass one")
            return None
        if context is None:
            raise ValueError(
                f"this model is conditioned on {self.config.condition!r}: pass a context of shape "
                f"(B, {', '.join(map(str, shape))})"
            )
        if not isinstance(context, Tensor) or not context.is_floating_point():
            raise ValueError(
                "the context must be a float tensor in model space (glowtorch.context_from_lowres or "
                "GlowConfig.context_of make one from uint8 images)"
            )
        if context.dim() != 4 or tuple(context.shape[1:]) != tuple(shape) or context.shape[0] not in (1, batch):
            raise ValueError(
                f"the context must have shape ({batch}, {', '.join(map(str, shape))}) (or 1 row for all), "
                f"got {tuple(context.shape)}"
            )
        if not torch.isfinite(context).all():
            raise ValueError("the context contains NaN or infinite values")
        context = context.to(device=self.top_prior.device, dtype=self.top_prior.dtype)
        return context.expand(batch, -1, -1, -1) if context.shape[0] != batch else context

    def context_features(self, context: Tensor | None, batch: int) -> list[Tensor | None]:
        """The context encoder's features of ``context`` ``(batch or 1, C_c, h, w)``, one
        ``(batch, C_c + context_features, H_l, W_l)`` map per level (finest first); Nones for an unconditional
        model (``context`` None). ``ValueError`` for a missing or wrong context."""
        return self._features(self._check_context(context, batch))

    def _features(self, context: Tensor | None) -> list[Tensor | None]:
        if context is None:
            return [None] * len(self.levels)
        return [self.layout(f) for f in self.context_encoder(self.layout(context))]

    # ----------------------------------------------------------------- priors
    def top_prior_params(
        self, batch: int, y: Tensor | None, top_features: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mean and log-std of the top latent: ``(B, C_top, H_top, W_top)`` each; ``top_features`` is the
        context encoder's map of the top level (conditional models)."""
        h = self.top_prior.expand(batch, -1, -1, -1)
        if y is not None:
            onehot = F.one_hot(y.long(), self.config.num_classes).to(h.dtype)
            shift = self.label_prior(onehot)
            h = h + (shift.view(h.shape) if self.config.class_prior == "spatial" else shift[:, :, None, None])
        if top_features is not None:
            h = h + self.context_prior(top_features)
        return h[:, 0::2], h[:, 1::2]

    def class_log_likelihoods(self, z_top: Tensor, *, context: Tensor | None = None) -> Tensor:
        """``(B, num_classes)``: ``log p(z_top | y)`` for every class ``y``. Only the top prior depends on
        the class, so this is ``log p(x | y)`` up to a term that is the same for every class: its argmax
        is the model's own (Bayes) classification of ``x`` under equal class priors (given the ``context``,
        for models that have one)."""
        if self.config.num_classes == 0:
            raise ValueError("class likelihoods need a class-conditional model (num_classes > 0)")
        batch, classes = z_top.shape[0], self.config.num_classes
        top = self.context_features(context, batch)[-1]
        labels = torch.arange(classes, device=z_top.device).repeat(batch)
        top = top.repeat_interleave(classes, dim=0) if top is not None else None
        mean, log_std = self.top_prior_params(batch * classes, labels, top)
        z = z_top.repeat_interleave(classes, dim=0)
        return gaussian_log_prob(z, mean, log_std).view(batch, classes)

    # ----------------------------------------------------------------- passes
    @torch.no_grad()
    def initialize(
        self, x: Tensor, y: Tensor | None = None, all_reduce_sum=None, *, context: Tensor | None = None
    ) -> None:
        """Data-dependent ActNorm initialization from one batch ``x`` ``(B, C, H, W)``.

        One forward pass in which every ActNorm (of the flow steps and inside the coupling networks)
        sets itself from the activations reaching it, so the network starts with zero-mean,
        unit-variance activations. ``all_reduce_sum`` (distributed training) sums over processes,
        giving the statistics of the union of all processes' batches (of any sizes). Conditional models
        take the batch's ``context``: the coupling networks' ActNorms see it too.
        """
        self._check_input(x, data_range=True)
        if y is not None:  # labels only reach the top prior, which initialization does not touch
            self._check_labels(y, x.shape[0])
        features = self.context_features(context, x.shape[0])
        actnorms = self.actnorms()
        for actnorm in actnorms:
            actnorm.initialized.fill_(False)
            actnorm.initialize_next, actnorm.all_reduce_sum = True, all_reduce_sum
        try:
            h = self.layout(x)
            for level, steps in enumerate(self.levels):
                h, _ = self.squeeze(h)
                h, _ = steps(h, features[level])
                if level < len(self.splits):
                    h, _ = self.splits[level].split(h)
        finally:
            for actnorm in actnorms:
                actnorm.initialize_next, actnorm.all_reduce_sum = False, None

    def forward(
        self, x: Tensor, y: Tensor | None = None, *, context: Tensor | None = None
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """One pass for training: (``zs``, ``logdet`` ``(B,)``, ``log_prior`` ``(B,)``, the latents' prior density).

        ``log_prior + logdet`` is ``log_prob(x)`` (``log p(x | context)`` for conditional models);
        ``zs[-1]`` feeds ``classifier_logits``.
        """
        if not torch.compiler.is_compiling():  # data-dependent checks would split a compiled graph
            self._check_input(x)
            y = self._check_labels(y, x.shape[0])
            context = self._check_context(context, x.shape[0])
            self._require_initialized()
        features = self._features(context)
        h = self.layout(x)
        zs: list[Tensor] = []
        logdet = x.new_zeros(x.shape[0])
        log_prior = x.new_zeros(x.shape[0])
        for level, steps in enumerate(self.levels):
            h, _ = self.squeeze(h)
            h, step_logdet = run_steps(steps, h, self.compute.memory, features[level])
            logdet = logdet + step_logdet
            if level < len(self.splits):
                split = self.splits[level]
                h, z = split.split(h)
                log_prior = log_prior + gaussian_log_prob(z, *split.prior(h, features[level]))
                zs.append(z)
        zs.append(h)
        log_prior = log_prior + gaussian_log_prob(h, *self.top_prior_params(h.shape[0], y, features[-1]))
        return zs, logdet, log_prior

    def dequantized(self, x: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor]:
        """The model's dequantization of uniformly dequantized ``x`` ``(B, C, H, W)`` made with ``noise`` (the
        uniform draws, ``glowtorch.dequantize``): ``(x', log_q)`` with ``log_q`` ``(B,)`` the log-density of
        the noise inside the bins. Uniform dequantization: ``(x, 0)`` (``noise`` may be None); variational:
        ``x'`` from ``q(u | x)`` by the same draws. Bits/dim are ``nll_bits_per_dim(log_prob(x') - log_q)``."""
        if self.config.dequantization == "uniform":
            return x, x.new_zeros(x.shape[0])
        if noise is None:
            raise ValueError("a model with variational dequantization draws from the noise that made x: pass noise")
        return self.dequantizer(x, noise)

    def encode(
        self, x: Tensor, y: Tensor | None = None, *, context: Tensor | None = None
    ) -> tuple[list[Tensor], Tensor]:
        """Data to latents: ``x`` ``(B, C, H, W)`` -> (``zs``, ``logdet`` ``(B,)``), finest latent first."""
        zs, logdet, _ = self(x, y, context=context)
        return zs, logdet

    def log_prob(self, x: Tensor, y: Tensor | None = None, *, context: Tensor | None = None) -> Tensor:
        """``(B,)`` log-density in nats of continuous ``x``: sum of latent log-priors + logdet (given the
        ``context`` ``(B or 1, C_c, h, w)`` for conditional models)."""
        _, logdet, log_prior = self(x, y, context=context)
        return log_prior + logdet

    def classify(self, x: Tensor, *, context: Tensor | None = None) -> Tensor:
        """Class logits ``(B, num_classes)`` from the mean-pooled top latent (class-conditional models)."""
        if self.config.num_classes == 0:
            raise ValueError("classify needs a class-conditional model (num_classes > 0)")
        zs, _ = self.encode(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device), context=context)
        return self.classifier_logits(zs[-1])

    def classifier_logits(self, z_top: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` from a top latent ``(B, C_top, H_top, W_top)``."""
        return self.classifier(z_top.mean(dim=(2, 3)))

    def _check_latents(self, zs: Sequence[Tensor]) -> None:
        if len(zs) != len(self.latent_shapes):
            raise ValueError(f"expected {len(self.latent_shapes)} latents (one per level), got {len(zs)}")
        batch = zs[0].shape[0] if zs[0].dim() == 4 else -1
        for i, (z, shape) in enumerate(zip(zs, self.latent_shapes, strict=True)):
            if z.dim() != 4 or tuple(z.shape[1:]) != shape or z.shape[0] != batch:
                raise ValueError(f"latent {i} must have shape (B, {', '.join(map(str, shape))}), got {tuple(z.shape)}")
            if not z.is_floating_point():
                raise ValueError(f"latent {i} must be a float tensor, got dtype {z.dtype}")
            if not torch.isfinite(z).all():
                raise ValueError(f"latent {i} contains NaN or infinite values")

    def decode(self, zs: Sequence[Tensor], y: Tensor | None = None, *, context: Tensor | None = None) -> Tensor:
        """Latents (finest first, as ``encode`` returns them) to images ``(B, C, H, W)``; conditional models
        decode under the ``context`` they were encoded with."""
        self._check_latents(zs)
        context = self._check_context(context, zs[0].shape[0])
        self._require_initialized()
        return (self._compiled_decode or self._decode)(list(zs), context)

    def compile_decode(self, **options) -> Glow:
        """Runs ``decode``, ``sample`` and ``sample_with_latents`` through ``torch.compile(**options)``
        from now on; the first call compiles (a new temperature or batch size compiles again).
        Training compiles the loss instead (``TrainConfig.compile``)."""
        self._compiled_decode = torch.compile(self._decode, **options)
        self._compiled_sample = torch.compile(self.sample_from_noise, **options)
        return self

    def _decode(self, zs: list[Tensor], context: Tensor | None = None) -> Tensor:
        features = self._features(context)
        return self.decode_levels(self.layout(zs[-1]), lambda level, h: self.layout(zs[level]), features)

    def decode_levels(
        self,
        h: Tensor,
        latent: Callable[[int, Tensor], Tensor],
        features: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        """The top latent ``h`` to images, coarsest level first; ``latent(level, h)`` gives the latent
        that the split of ``level`` puts back beside ``h`` (the kept half). ``features``: the context
        encoder's maps (``context_features``) of conditional models."""
        features = features or [None] * len(self.levels)
        for level in reversed(range(len(self.levels))):
            if level < len(self.splits):
                h = self.splits[level].merge(h, latent(level, h))
            h, _ = self.levels[level].inverse(h, features[level])
            h, _ = self.squeeze.inverse(h)
        return h

    def _temperatures(self, temperature: float | Sequence[float]) -> list[float]:
        if isinstance(temperature, (int, float)):
            temperatures = [float(temperature)] * len(self.latent_shapes)
        else:
            temperatures = [float(t) for t in temperature]
            if len(temperatures) != len(self.latent_shapes):
                raise ValueError(f"give one temperature per level ({len(self.latent_shapes)}), got {len(temperatures)}")
        if any(not 0 <= t < math.inf for t in temperatures):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        return temperatures

    @torch.no_grad()
    def sample_with_latents(
        self,
        n: int,
        temperature: float | Sequence[float] = 0.7,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        context: Tensor | None = None,
    ) -> tuple[list[Tensor], Tensor]:
        """Draws latents from the prior, each level's std scaled by its temperature (a number, or
        one per level, finest first), and decodes them in the same pass: returns (zs, images).
        Conditional models sample from ``p(x | context)``: ``context`` ``(n or 1, C_c, h, w)``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        temperatures = self._temperatures(temperature)
        y = self._check_labels(y, n)
        context = self._check_context(context, n)
        self._require_initialized()
        ref = self.top_prior
        # All the noise first, coarsest level first (the order decoding uses it), so that the rest is
        # one generator-free function that torch.compile can take whole.
        noise = [
            torch.randn((n, *self.latent_shapes[i]), generator=generator, dtype=ref.dtype, device=ref.device)
            for i in reversed(range(len(self.latent_shapes)))
        ][::-1]
        return (self._compiled_sample or self.sample_from_noise)(noise, temperatures, y, context)

    def sample_from_noise(
        self, noise: list[Tensor], temperatures: list[float], y: Tensor | None, context: Tensor | None = None
    ) -> tuple[list[Tensor], Tensor]:
        """Standard-normal ``noise`` (one per latent, finest first) to (latents, images): each latent is
        its prior's mean plus ``temperature * std * noise``, decoded in the same pass."""
        features = self._features(context)
        prior = self.top_prior_params(noise[-1].shape[0], y, features[-1])
        h = self.layout(self._scaled(*prior, temperatures[-1], noise[-1]))
        zs: list[Tensor] = [h] * len(self.latent_shapes)  # the top latent last; decoding fills the others

        def draw(level: int, kept: Tensor) -> Tensor:
            mean, log_std = self.splits[level].prior(kept, features[level])
            zs[level] = self._scaled(mean, log_std, temperatures[level], self.layout(noise[level]))
            return zs[level]

        return zs, self.decode_levels(h, draw, features)

    @staticmethod
    def _scaled(mean: Tensor, log_std: Tensor, temperature: float, eps: Tensor) -> Tensor:
        return mean + temperature * torch.exp(log_std) * eps

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float | Sequence[float] = 0.7,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        context: Tensor | None = None,
    ) -> Tensor:
        """``n`` images ``(n, C, H, W)`` in model space; ``temperature`` 0 gives the prior's mode. Conditional
        models take ``context`` ``(n or 1, C_c, h, w)``."""
        return self.sample_with_latents(n, temperature, y, generator, context=context)[1]
