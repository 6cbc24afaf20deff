"""Glow's invertible layers.

Every layer follows one contract (data -> latent is "forward", as in the paper):

    forward(x) -> (y, logdet)    logdet = log|det dy/dx|, shape (B,)
    inverse(y) -> (x, logdet)    logdet = log|det dx/dy| = -forward's logdet

Images are ``(B, C, H, W)`` tensors throughout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BASIC_COUPLINGS",
    "COUPLING_NETWORKS",
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "Coupling",
    "CouplingNetwork",
    "FlowSequence",
    "FlowStep",
    "InvertibleConv1x1",
    "InvertibleConv1x1LU",
    "ReversePermutation",
    "ShufflePermutation",
    "Split",
    "Squeeze",
    "ZeroConv2d",
    "gaussian_log_prob",
    "random_rotation",
]

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Log-density of a diagonal Gaussian, summed over all but the batch dimension.

    Args:
        z, mean, log_std: ``(B, C, H, W)`` (mean and log_std broadcast).

    Returns:
        ``(B,)``: sum of ``-0.5 * (log 2pi + 2 log_std + (z - mean)^2 / std^2)``.
    """
    log_p = -0.5 * (LOG_2PI + 2.0 * log_std + (z - mean) ** 2 * torch.exp(-2.0 * log_std))
    return log_p.flatten(1).sum(1)


def random_rotation(channels: int, generator: torch.Generator | None = None) -> Tensor:
    """A random orthogonal ``(channels, channels)`` matrix (QR of a Gaussian matrix), in float64."""
    q, r = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


class ActNorm(nn.Module):
    """Per-channel affine map ``y = (x + bias) * exp(log_scale)`` with data-dependent init.

    ``initialize(x)`` sets the parameters so the outputs on ``x`` have zero mean and unit
    variance per channel. Whether that happened is the buffer ``initialized``, saved with the
    model, so loading a checkpoint never initializes again. logdet = H * W * sum(log_scale).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        # Set by Glow.initialize: the next forward initializes from its input (then clears this).
        self.initialize_next: bool = False
        self.all_reduce_sum = None

    @torch.no_grad()
    def initialize(self, x: Tensor, all_reduce_sum=None) -> None:
        """Set bias and scale from a batch ``x`` of shape ``(B, C, H, W)``.

        ``all_reduce_sum``, when given, sums a tensor over processes (distributed init): each process's
        moments are weighted by its number of values, so the statistics are those of the union of all
        processes' batches, whatever their sizes.
        A channel whose standard deviation is (numerically) zero keeps scale 1.
        """
        moments = torch.stack([x.mean(dim=(0, 2, 3)), (x * x).mean(dim=(0, 2, 3))]).double()
        if all_reduce_sum is not None:
            count = float(x.shape[0] * x.shape[2] * x.shape[3])
            packed = all_reduce_sum(torch.cat([moments.flatten() * count, moments.new_tensor([count])]))
            moments = packed[:-1].view_as(moments) / packed[-1]
        mean, mean_sq = moments[0], moments[1]
        std = (mean_sq - mean * mean).clamp_min(0.0).sqrt()
        log_scale = torch.where(std > 1e-6, -torch.log(std.clamp_min(1e-6)), torch.zeros_like(std))
        self.bias.copy_((-mean).view_as(self.bias))
        self.log_scale.copy_(log_scale.view_as(self.log_scale))
        self.initialized.fill_(True)

    def logdet(self, x: Tensor) -> Tensor:
        height, width = x.shape[2], x.shape[3]
        return (height * width * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.initialize_next:
            self.initialize(x, self.all_reduce_sum)
            self.initialize_next, self.all_reduce_sum = False, None
        return (x + self.bias) * torch.exp(self.log_scale), self.logdet(x)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y * torch.exp(-self.log_scale) - self.bias, -self.logdet(y)


def parameters_state(module: nn.Module) -> tuple:
    """What identifies the current values of ``module``'s parameters: in-place updates bump ``_version``,
    ``.to()`` swaps storage. A cache keyed on it is valid until a parameter changes."""
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in module.parameters())


def _cached_inverse(layer: nn.Module, weight) -> Tensor:
    """``inv(weight())`` computed in float64 and cast back. Without autograd (sampling, decoding) it is
    cached until a parameter changes (in-place updates bump ``_version``; ``.to()`` swaps storage)."""
    if torch.is_grad_enabled():
        w = weight()
        return torch.linalg.inv(w.double()).to(w.dtype)
    key = parameters_state(layer)
    cache = layer.__dict__.get("_inverse_cache")
    if cache is None or cache[0] != key:
        w = weight()
        cache = (key, torch.linalg.inv(w.double()).to(w.dtype))
        layer.__dict__["_inverse_cache"] = cache
    return cache[1]


class _Conv1x1(nn.Module):
    """An invertible 1x1 convolution given by its ``C x C`` matrix: subclasses define ``weight_matrix``,
    ``log_abs_det`` and ``inverse_matrix``. logdet = H * W * log|det W|."""

    def weight_matrix(self) -> Tensor:
        raise NotImplementedError

    def log_abs_det(self) -> Tensor:
        raise NotImplementedError

    def inverse_matrix(self) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        height, width = x.shape[2], x.shape[3]
        y = F.conv2d(x, self.weight_matrix()[:, :, None, None])
        return y, (height * width * self.log_abs_det()).expand(x.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        height, width = y.shape[2], y.shape[3]
        x = F.conv2d(y, self.inverse_matrix()[:, :, None, None])
        return x, (-height * width * self.log_abs_det()).expand(y.shape[0])


class InvertibleConv1x1(_Conv1x1):
    """Invertible 1x1 convolution with an unconstrained weight ``W`` (``C x C``).

    Initialized to a random rotation. log|det W| is computed in float64; the inverse weight is
    computed in float64 and cast back.
    """

    def __init__(self, channels: int, weight: Tensor | None = None) -> None:
        super().__init__()
        dtype = torch.get_default_dtype() if weight is None else weight.dtype
        if weight is None:
            weight = random_rotation(channels)
        self.weight = nn.Parameter(weight.to(dtype).clone())

    def weight_matrix(self) -> Tensor:
        return self.weight

    def log_abs_det(self) -> Tensor:
        return torch.linalg.slogdet(self.weight.double())[1].to(self.weight.dtype)

    def inverse_matrix(self) -> Tensor:
        return _cached_inverse(self, lambda: self.weight)


class InvertibleConv1x1LU(_Conv1x1):
    """Invertible 1x1 convolution, LU-decomposed: ``W = P L (U + diag(sign(s) exp(log|s|)))``.

    ``P`` (permutation) and ``sign(s)`` are fixed buffers; ``L`` (unit lower triangular),
    ``U`` (strictly upper triangular) and ``log|s|`` are learned. logdet = H * W * sum(log|s|).
    """

    def __init__(self, channels: int, weight: Tensor | None = None) -> None:
        super().__init__()
        dtype = torch.get_default_dtype() if weight is None else weight.dtype
        if weight is None:
            weight = random_rotation(channels)
        p, lower, upper = torch.linalg.lu(weight.double())
        s = torch.diagonal(upper)
        self.register_buffer("permutation", p.to(dtype))
        self.register_buffer("sign_s", torch.sign(s).to(dtype))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1).to(dtype), persistent=False)
        self.register_buffer("eye", torch.eye(channels, dtype=dtype), persistent=False)
        self.lower = nn.Parameter(lower.to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).to(dtype))

    def weight_matrix(self) -> Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.permutation @ lower @ upper

    def log_abs_det(self) -> Tensor:
        return self.log_s.sum()

    def inverse_matrix(self) -> Tensor:
        return _cached_inverse(self, self.weight_matrix)


class ReversePermutation(nn.Module):
    """Reverses the channel order (the paper's "reverse" baseline); logdet 0."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y.flip(1), y.new_zeros(y.shape[0])


class ShufflePermutation(nn.Module):
    """A fixed random channel shuffle whose order is saved with the model; logdet 0."""

    def __init__(self, channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        order = torch.randperm(channels, generator=generator)
        self.register_buffer("order", order)
        self.register_buffer("inverse_order", torch.argsort(order))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, self.order], x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y[:, self.inverse_order], y.new_zeros(y.shape[0])


class ZeroConv2d(nn.Module):
    """3x3 convolution starting at zero, output scaled by ``exp(3 * log_scale)`` (reference code)."""

    def __init__(
        self, in_channels: int, out_channels: int, log_scale_factor: float = 3.0, pad_value: float = 0.0
    ) -> None:
        super().__init__()
        self.pad_value = float(pad_value)  # the border's value (rosinality/glow-pytorch pads with 1)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=0 if self.pad_value else 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.log_scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.log_scale_factor = log_scale_factor

    def forward(self, x: Tensor) -> Tensor:
        """``conv(x) * exp(3 * log_scale)``, as one convolution with pre-scaled weights."""
        scale = torch.exp(self.log_scale * self.log_scale_factor)
        if self.pad_value:
            x = F.pad(x, (1, 1, 1, 1), value=self.pad_value)
        return scaled_conv(self.conv, x, self.conv.bias, scale.flatten())


def scaled_conv(conv: nn.Conv2d, x: Tensor, bias: Tensor, scale: Tensor) -> Tensor:
    """``(W * x + bias) * scale`` per output channel as one convolution, ``(W scale) * x + bias scale``
    (``W``: ``conv``'s weights; ``bias``, ``scale``: ``(C_out,)``): same values, one pass over the output."""
    return F.conv2d(x, conv.weight * scale.view(-1, 1, 1, 1), bias * scale, padding=conv.padding)


def conv_actnorm(conv: nn.Conv2d, actnorm: ActNorm, x: Tensor) -> Tensor:
    """``actnorm(conv(x))`` for a bias-free ``conv`` as one convolution carrying the ActNorm,
    ``(W * x + b) e^s``; ActNorm's data-dependent initialization takes the unfolded path."""
    if actnorm.initialize_next:
        return actnorm(conv(x))[0]
    return scaled_conv(conv, x, actnorm.bias.flatten(), torch.exp(actnorm.log_scale).flatten())


COUPLING_NETWORKS = ("actnorm", "bias")


class CouplingNetwork(nn.Module):
    """conv3x3 -> ActNorm -> ReLU -> conv1x1 -> ActNorm -> ReLU -> zero-initialized conv3x3:
    ``(B, C_in, H, W) -> (B, C_out, H, W)``.

    As in the reference code, the hidden convolutions have no bias and are followed by ActNorm
    (initialized from data with the rest of the model), which keeps their activations well scaled.
    With ``norm="bias"`` they carry biases and no ActNorm (rosinality/glow-pytorch's network);
    ``pad_value`` is what the output convolution pads with.
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int, norm: str = "actnorm", pad_value: float = 0.0
    ) -> None:
        super().__init__()
        bias = norm == "bias"
        # In this order (parameters' order is what an optimizer's saved state refers to).
        self.conv_in = nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=bias)
        if not bias:
            self.norm_in = ActNorm(hidden_channels)
        self.conv_hidden = nn.Conv2d(hidden_channels, hidden_channels, 1, bias=bias)
        if not bias:
            self.norm_hidden = ActNorm(hidden_channels)
        for conv in (self.conv_in, self.conv_hidden):
            nn.init.normal_(conv.weight, 0.0, 0.05)
            if bias:
                nn.init.zeros_(conv.bias)
        self.conv_out = ZeroConv2d(hidden_channels, out_channels, pad_value=pad_value)

    def forward(self, x: Tensor) -> Tensor:
        # In place: nothing keeps the pre-activation for backward (ReLU's backward uses its output).
        if self.conv_in.bias is not None:
            h = F.relu_(self.conv_hidden(F.relu_(self.conv_in(x))))
            return self.conv_out(h)
        h = F.relu_(conv_actnorm(self.conv_in, self.norm_in, x))
        h = F.relu_(conv_actnorm(self.conv_hidden, self.norm_hidden, h))
        return self.conv_out(h)


def with_context(x: Tensor, context: Tensor | None, context_channels: int, what: str) -> Tensor:
    """The input of a network conditioned on ``context_channels`` context channels: ``x`` with the context
    concatenated on the channel axis (``x`` itself when the network has none)."""
    if not context_channels:
        return x
    if context is None:
        raise ValueError(f"this {what} is conditioned on a context: pass context")
    return torch.cat([x, context.to(x.dtype)], 1)


class Coupling(nn.Module):
    """A coupling layer: the first ``C // 2`` channels pass through and condition an element-wise,
    invertible map of the rest; subclasses define the map.

    With ``context_channels`` > 0 the network also sees a context feature map ``(B, context_channels, H, W)``,
    concatenated to the conditioning half: ``forward(x, context)``, ``inverse(y, context)``. The map stays
    invertible in ``x`` for any fixed context.
    """

    out_factor = 1
    takes_context = True

    def __init__(
        self, channels: int, hidden_channels: int, network: str = "actnorm", pad_value: float = 0.0,
        context_channels: int = 0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.split = channels // 2
        self.context_channels = context_channels
        out = self.out_factor * (channels - self.split)
        self.net = CouplingNetwork(self.split + context_channels, out, hidden_channels, network, pad_value)
        # None: the network computes in the input's dtype; else under autocast to this dtype.
        self.autocast_dtype: torch.dtype | None = None

    def set_network_dtype(self, dtype: torch.dtype | None) -> None:
        """Runs the coupling network under autocast to ``dtype`` (e.g. ``torch.bfloat16``), or in the
        input's own dtype with None. The element-wise map and its logdet stay in the input's dtype."""
        self.autocast_dtype = dtype

    def network(self, x_cond: Tensor, context: Tensor | None = None) -> Tensor:
        x_cond = with_context(x_cond, context, self.context_channels, "coupling")
        if self.autocast_dtype is None:
            return self.net(x_cond)
        with torch.autocast(x_cond.device.type, dtype=self.autocast_dtype):
            h = self.net(x_cond)
        return h.to(x_cond.dtype)

    # Each coupling defines an element-wise map of the transformed half, given the network's output.
    def _coefficients(self, x_a: Tensor, context: Tensor | None) -> tuple[Tensor, ...]:
        """The map's parameters from the conditioning half ``x_a`` (and the context)."""
        raise NotImplementedError

    def _map(self, v: Tensor, coefficients: tuple[Tensor, ...], inverse: bool) -> tuple[Tensor, Tensor]:
        """The map of the transformed half ``v`` (its inverse when ``inverse``) and the log|det| of what was
        applied, per sample ``(B,)``: the inverse's is minus the forward's at the point it returns."""
        raise NotImplementedError

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        y_b, logdet = self._map(x_b, self._coefficients(x_a, context), inverse=False)
        return torch.cat([x_a, y_b], 1), logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y_a, y_b = y[:, : self.split], y[:, self.split :]
        x_b, logdet = self._map(y_b, self._coefficients(y_a, context), inverse=True)
        return torch.cat([y_a, x_b], 1), logdet

    def rebuild(self, y: Tensor, context: Tensor | None = None) -> tuple[tuple[Tensor, Tensor], Tensor, Tensor]:
        """Reversible backprop in one network evaluation (``x_a = y_a``, so it serves both ways):
        ((``x_a``, ``x_b``) as new leaves, ``y`` recomputed from them with a graph, forward logdet)."""
        y_a, y_b = y[:, : self.split], y[:, self.split :]
        x_a = y_a.detach().requires_grad_(True)
        coefficients = self._coefficients(x_a, context)
        x_b = self._map(y_b, coefficients, inverse=True)[0].detach().requires_grad_(True)
        y_b_again, logdet = self._map(x_b, coefficients, inverse=False)
        return (x_a, x_b), torch.cat([x_a, y_b_again], 1), logdet


class AdditiveCoupling(Coupling):
    """``y_b = x_b + NN(x_a)``, ``y_a = x_a``; logdet 0 (volume preserving)."""

    def _coefficients(self, x_a: Tensor, context: Tensor | None) -> tuple[Tensor, ...]:
        return (self.network(x_a, context),)

    def _map(self, v: Tensor, coefficients: tuple[Tensor, ...], inverse: bool) -> tuple[Tensor, Tensor]:
        shift = coefficients[0]
        return (v - shift if inverse else v + shift), v.new_zeros(v.shape[0])


class AffineCoupling(Coupling):
    """``y_b = (x_b + shift) * scale`` with ``shift, h = NN(x_a)`` and ``scale = sigmoid(h + 2)``.

    logdet = sum(log scale). The network's output channels alternate shift and scale (reference code).
    """

    out_factor = 2

    def _coefficients(self, x_a: Tensor, context: Tensor | None) -> tuple[Tensor, ...]:
        h = self.network(x_a, context)
        return h[:, 0::2], F.logsigmoid(h[:, 1::2] + 2.0)

    def _map(self, v: Tensor, coefficients: tuple[Tensor, ...], inverse: bool) -> tuple[Tensor, Tensor]:
        shift, log_scale = coefficients
        logdet = log_scale.flatten(1).sum(1)
        if inverse:
            return v * torch.exp(-log_scale) - shift, -logdet
        return (v + shift) * torch.exp(log_scale), logdet


class Squeeze(nn.Module):
    """2x2 space-to-depth: ``(B, C, H, W) -> (B, 4C, H/2, W/2)``; logdet 0."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        y = x.view(b, c, h // 2, 2, w // 2, 2)
        y = y.permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)  # (B, C*2*2, H/2, W/2)
        return y, x.new_zeros(b)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        b, c4, h, w = y.shape
        x = y.view(b, c4 // 4, 2, 2, h, w)
        x = x.permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, 2 * h, 2 * w)  # (B, C, 2H, 2W)
        return x, y.new_zeros(b)


def call_layer(layer: nn.Module, x: Tensor, context: Tensor | None, inverse: bool = False) -> tuple[Tensor, Tensor]:
    """``layer(x)`` or ``layer.inverse(x)``, passing ``context`` to the layers that take one (``takes_context``)."""
    run = layer.inverse if inverse else layer
    return run(x, context) if getattr(layer, "takes_context", False) else run(x)


class FlowSequence(nn.Module):
    """Layers applied in order; logdets add up. ``inverse`` runs them backwards. A ``context`` reaches the
    layers that take one."""

    takes_context = True

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, layer_logdet = call_layer(layer, x, context)
            logdet = logdet + layer_logdet
        return x, logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = y.new_zeros(y.shape[0])
        for layer in reversed(self.layers):
            y, layer_logdet = call_layer(layer, y, context, inverse=True)
            logdet = logdet + layer_logdet
        return y, logdet


PERMUTATIONS = {
    "lu": InvertibleConv1x1LU,
    "invconv": InvertibleConv1x1,
    "shuffle": ShufflePermutation,
    "reverse": lambda channels: ReversePermutation(),
}
# Couplings FlowStep knows by name; every family, these and the ones of other modules built on Coupling,
# is in glowtorch.couplings.COUPLINGS.
BASIC_COUPLINGS: dict[str, type[Coupling]] = {"affine": AffineCoupling, "additive": AdditiveCoupling}


class FlowStep(FlowSequence):
    """One step of flow: ActNorm -> permutation (1x1 conv, shuffle or reverse) -> coupling. ``coupling`` is
    a name of ``BASIC_COUPLINGS`` or any ``Coupling`` subclass (``glowtorch.couplings.COUPLINGS`` has them all)."""

    def __init__(
        self, channels: int, hidden_channels: int, coupling: str | type[Coupling] = "affine", permutation: str = "lu",
        network: str = "actnorm", pad_value: float = 0.0, context_channels: int = 0,
    ) -> None:  # fmt: skip
        family = BASIC_COUPLINGS[coupling] if isinstance(coupling, str) else coupling
        super().__init__(
            [
                ActNorm(channels),
                PERMUTATIONS[permutation](channels),
                family(channels, hidden_channels, network, pad_value, context_channels),
            ]
        )

    def _foldable(self) -> bool:
        """ActNorm runs inside a 1x1 convolution after it, except while it initializes from data."""
        return isinstance(self.layers[1], _Conv1x1) and not self.actnorm.initialize_next

    def unfolded(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The step as its three layers one after another (the reference the folded path equals)."""
        return super().forward(x, context)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """With a 1x1 convolution, ActNorm and the convolution run as one convolution:
        ``W ((x + b) e^s) = (W diag(e^s)) x + W diag(e^s) b``; logdets add as before."""
        if not self._foldable():
            return super().forward(x, context)
        actnorm, conv, coupling = self.layers
        weight = conv.weight_matrix() * torch.exp(actnorm.log_scale).view(1, -1)
        h = F.conv2d(x, weight[:, :, None, None], weight @ actnorm.bias.flatten())
        logdet = x.shape[2] * x.shape[3] * (actnorm.log_scale.sum() + conv.log_abs_det())
        y, coupling_logdet = coupling(h, context)
        return y, logdet + coupling_logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """With a 1x1 convolution: ``x = diag(e^-s) W^-1 h - b``, one convolution with bias."""
        if not self._foldable():
            return super().inverse(y, context)
        actnorm, conv, coupling = self.layers
        h, coupling_logdet = coupling.inverse(y, context)
        weight = conv.inverse_matrix() * torch.exp(-actnorm.log_scale).view(-1, 1)
        x = F.conv2d(h, weight[:, :, None, None], -actnorm.bias.flatten())
        logdet = -h.shape[2] * h.shape[3] * (actnorm.log_scale.sum() + conv.log_abs_det())
        return x, coupling_logdet + logdet

    @property
    def actnorm(self) -> ActNorm:
        return self.layers[0]

    @property
    def coupling(self) -> Coupling:
        return self.layers[2]


class Split(nn.Module):
    """Factors out half the channels, with a learned Gaussian prior conditioned on the kept half.

    Not a flow layer of its own (the split has unit Jacobian and no logdet): ``split(h) -> (kept, z)``
    cuts ``(B, C, H, W)`` into ``(B, C - C//2, H, W)`` and ``(B, C//2, H, W)``, ``merge(kept, z)`` puts
    them back together, and ``prior(kept) -> (mean, log_std)`` of ``z`` comes from a zero-initialized
    conv (standard normal at initialization). With ``context_channels`` > 0 the conv also sees a context
    feature map, concatenated to ``kept``: ``prior(kept, context)``.
    """

    def __init__(self, channels: int, pad_value: float = 0.0, context_channels: int = 0) -> None:
        super().__init__()
        self.kept_channels = channels - channels // 2
        self.context_channels = context_channels
        self.prior_net = ZeroConv2d(self.kept_channels + context_channels, 2 * (channels // 2), pad_value=pad_value)

    def split(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return h[:, : self.kept_channels], h[:, self.kept_channels :]

    def merge(self, kept: Tensor, z: Tensor) -> Tensor:
        return torch.cat([kept, z], 1)

    def prior(self, kept: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.prior_net(with_context(kept, context, self.context_channels, "split's prior"))
        return h[:, 0::2], h[:, 1::2]
