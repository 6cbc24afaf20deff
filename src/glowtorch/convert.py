"""Models trained with other Glow implementations, taken in as glowtorch models that compute the same
function: ``from_y0ast`` reads a checkpoint of y0ast/Glow-PyTorch, ``from_rosinality`` one of
rosinality/glow-pytorch.

y0ast/Glow-PyTorch follows the paper's code closely: its coupling network, output convolutions and split
priors are glowtorch's (interleaved shift/scale and mean/log-std). What differs is arranged here: its
ActNorm ``logs`` is glowtorch's ``log_scale``; its top prior is a zero-initialized convolution of a zero
buffer (``learn_top_fn(prior_h)``), split in halves, which becomes glowtorch's learned top prior (the
same value at every position); its class projections (``LinearZeros``, output times ``exp(3 logs)``)
become glowtorch's ``label_prior`` and ``classifier`` with the scale folded in. Its ActNorm ``inited`` flag
is not saved (its own code re-initializes after loading unless told not to): a converted model is
initialized. Its ``shuffle`` permutation draws its order at random and does not save it, so a shuffle
model cannot be converted; the architecture is read from the tensors' shapes, and ``hparams.json``
(written by its train.py) settles ``reverse`` against ``shuffle``, which leave no tensors.

rosinality/glow-pytorch saves a bare ``state_dict`` (through ``nn.DataParallel``: keys start with
``module.``) and no configuration: the architecture is read from the tensors' shapes, and what they do not
say (the image size, the bits per pixel) is asked for. Its model differs from the paper's code in ways
glowtorch has options for (``GlowConfig.coupling_network="bias"``, ``zero_conv_padding=1.0``), and in ways
that are only a different layout of the same numbers, rearranged here:

- ActNorm is ``scale * (x + loc)`` with a free ``scale``: glowtorch's ``log_scale`` is ``log(scale)``
  (a negative scale cannot be represented and is refused);
- the coupling network's output and the split priors come in halves (``log_s, t = h.chunk(2, 1)``;
  ``mean, log_sd = h.chunk(2, 1)``), glowtorch's interleaved (shift, scale; mean, log-std): the output
  convolutions' rows are reordered;
- the top prior is a zero-initialized convolution applied to zeros padded with ones, which gives a
  learned mean and log-std per position: it becomes glowtorch's learned top prior (``learn_top``);
- the last block always uses the LU 1x1 convolution: in a model trained without LU (``conv_lu=False``)
  its weight is multiplied out into a plain 1x1 convolution, the same matrix.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .checkpoint import CheckpointError
from .model import Glow, GlowConfig

__all__ = [
    "ConversionError",
    "from_rosinality",
    "from_y0ast",
    "load_port_checkpoint",
    "rosinality_config",
    "y0ast_config",
]


class ConversionError(CheckpointError):
    """A checkpoint that is not what its converter reads, or holds what glowtorch cannot represent."""


def load_port_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A checkpoint file of another implementation as a ``state_dict`` (``torch.load(weights_only=True)``;
    a dict holding the weights under ``"model"`` or ``"state_dict"`` is unwrapped, ``module.`` prefixes
    are dropped)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConversionError(f"{path} not found") from None
    except Exception as error:  # noqa: BLE001 - any unreadable file
        raise ConversionError(
            f"{path} is not a PyTorch checkpoint of tensors ({str(error).splitlines()[0][:120]})"
        ) from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(f"{path} holds no state_dict (a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def rosinality_config(state: dict[str, Tensor], image_size: int, n_bits: int) -> GlowConfig:
    """The ``GlowConfig`` of a rosinality/glow-pytorch ``state_dict``: levels, depth, width, channels,
    coupling and permutation from the tensors' shapes; ``image_size`` and ``n_bits`` given."""
    if not any(k.startswith("blocks.") for k in state):
        raise ConversionError("not a rosinality/glow-pytorch checkpoint: no blocks.* keys")
    blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    flows = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.0\.flows\.(\d+)\.", k)))
    first = "blocks.0.flows.0."
    try:
        squeezed = state[first + "actnorm.loc"].shape[1]
        hidden = state[first + "coupling.net.0.weight"].shape[0]
        out = state[first + "coupling.net.4.conv.weight"].shape[0]
    except KeyError as missing:
        raise ConversionError(f"not a rosinality/glow-pytorch checkpoint: {missing.args[0]} is missing") from None
    if squeezed % 4:
        raise ConversionError(f"{first}actnorm.loc has {squeezed} channels, not 4 x the image's: not a Glow block")
    try:
        return _rosinality_config(squeezed, blocks, flows, hidden, out, first + "invconv.w_p" in state, image_size,
                                  n_bits)  # fmt: skip
    except ValueError as error:  # e.g. an image size the levels do not divide
        raise ConversionError(f"--image-size {image_size} does not fit this checkpoint: {error}") from None


def _rosinality_config(
    squeezed: int, blocks: int, flows: int, hidden: int, out: int, lu: bool, image_size: int, n_bits: int
) -> GlowConfig:
    return GlowConfig(
        image_shape=(squeezed // 4, image_size, image_size),
        levels=blocks,
        depth=flows,
        hidden_channels=hidden,
        coupling="affine" if out == squeezed else "additive",
        permutation="lu" if lu else "invconv",
        learn_top=True,
        n_bits=n_bits,
        coupling_network="bias",
        zero_conv_padding=1.0,
    )


class _StateKeys:
    """A port's ``state_dict`` (``module.`` prefixes dropped, float32) read key by key: ``take`` refuses a
    missing key, and ``refuse_unread`` any key no one took or marked ``used`` (a modified model)."""

    def __init__(self, state: dict[str, Tensor], port: str) -> None:
        self.state = {k.removeprefix("module."): v.detach().float() for k, v in state.items()}
        self.port = port
        self.used: set[str] = set()

    def take(self, key: str) -> Tensor:
        if key not in self.state:
            raise ConversionError(f"not a {self.port} checkpoint of this shape: {key} is missing")
        self.used.add(key)
        return self.state[key]

    def refuse_unread(self) -> None:
        unknown = sorted(set(self.state) - self.used)
        if unknown:
            raise ConversionError(f"keys this converter does not know: {', '.join(unknown[:3])}"
                                  f"{' and others' if len(unknown) > 3 else ''} (a modified model?)")  # fmt: skip


def _interleave(rows: Tensor) -> Tensor:
    """Rows ``[a_0..a_n, b_0..b_n]`` (halves) as ``[a_0, b_0, a_1, b_1, ...]`` (interleaved), on dim 0."""
    half = rows.shape[0] // 2
    return torch.stack([rows[:half], rows[half:]], dim=1).reshape(rows.shape)


def _lu_weight(state: dict[str, Tensor], prefix: str) -> Tensor:
    """The matrix of a rosinality ``InvConv2dLU``: ``P (L + I) (U + diag(sign(s) exp(log|s|)))``."""
    g = {k: state[prefix + k].double() for k in ("w_p", "w_l", "w_s", "w_u", "s_sign")}
    lower = torch.tril(g["w_l"], -1) + torch.eye(len(g["w_s"]), dtype=torch.float64)
    upper = torch.triu(g["w_u"], 1) + torch.diag(g["s_sign"] * torch.exp(g["w_s"]))
    return g["w_p"] @ lower @ upper


@torch.no_grad()
def from_rosinality(state: dict[str, Tensor], image_size: int, n_bits: int) -> Glow:
    """A glowtorch ``Glow`` computing the same ``log p(x)`` (and encode/decode) as the rosinality/glow-pytorch
    model of ``state`` (its ``state_dict``, ``module.`` prefixes allowed) on images of ``image_size`` squared
    pixels reduced to ``n_bits``: its inputs are glowtorch's, ``x in [-0.5, 0.5)``."""
    keys = _StateKeys(state, "rosinality/glow-pytorch")
    state, take, used = keys.state, keys.take, keys.used
    config = rosinality_config(state, image_size, n_bits)
    model = Glow(config)

    def zero_conv(target, prefix: str, interleave: bool) -> None:
        weight, bias, scale = take(prefix + "conv.weight"), take(prefix + "conv.bias"), take(prefix + "scale")
        order = _interleave if interleave else (lambda t: t)
        if target.conv.weight.shape != weight.shape:
            raise ConversionError(
                f"{prefix}conv.weight is {tuple(weight.shape)}, expected {tuple(target.conv.weight.shape)}"
            )
        target.conv.weight.copy_(order(weight))
        target.conv.bias.copy_(order(bias))
        target.log_scale.copy_(order(scale.flatten()).view_as(target.log_scale))

    for level, steps in enumerate(model.levels):
        for index, step in enumerate(steps.layers):
            prefix = f"blocks.{level}.flows.{index}."
            actnorm, conv, coupling = step.layers
            scale = take(prefix + "actnorm.scale")
            if (scale <= 0).any():
                raise ConversionError(
                    f"{prefix}actnorm.scale has values <= 0: glowtorch's ActNorm scale is exp(log_scale)"
                )
            actnorm.bias.copy_(take(prefix + "actnorm.loc"))
            actnorm.log_scale.copy_(scale.log())
            actnorm.initialized.fill_(True)
            used.add(prefix + "actnorm.initialized")
            if config.permutation == "lu":
                for ours, theirs in (("permutation", "w_p"), ("lower", "w_l"), ("upper", "w_u"), ("log_s", "w_s"),
                                     ("sign_s", "s_sign")):  # fmt: skip
                    getattr(conv, ours).copy_(take(prefix + "invconv." + theirs))
                used.update(prefix + "invconv." + k for k in ("u_mask", "l_mask", "l_eye"))
            elif prefix + "invconv.weight" in state:
                conv.weight.copy_(take(prefix + "invconv.weight").squeeze(-1).squeeze(-1))
            else:  # the last block is LU even in a model trained without it: the same matrix, plain
                conv.weight.copy_(_lu_weight(state, prefix + "invconv.").float())
                used.update(
                    prefix + "invconv." + k for k in ("w_p", "w_l", "w_s", "w_u", "s_sign", "u_mask", "l_mask", "l_eye")
                )
            net = coupling.net
            net.conv_in.weight.copy_(take(prefix + "coupling.net.0.weight"))
            net.conv_in.bias.copy_(take(prefix + "coupling.net.0.bias"))
            net.conv_hidden.weight.copy_(take(prefix + "coupling.net.2.weight"))
            net.conv_hidden.bias.copy_(take(prefix + "coupling.net.2.bias"))
            # theirs: (log_s, t) in halves; ours: (shift, scale) interleaved -> put t first, then interleave
            if config.coupling == "affine":
                swap = lambda t: torch.cat(t.chunk(2, 0)[::-1])  # noqa: E731
                theirs = {k: take(prefix + "coupling.net.4." + k) for k in ("conv.weight", "conv.bias")}
                scale = take(prefix + "coupling.net.4.scale").flatten()
                net.conv_out.conv.weight.copy_(_interleave(swap(theirs["conv.weight"])))
                net.conv_out.conv.bias.copy_(_interleave(swap(theirs["conv.bias"])))
                net.conv_out.log_scale.copy_(_interleave(swap(scale)).view_as(net.conv_out.log_scale))
            else:
                zero_conv(net.conv_out, prefix + "coupling.net.4.", interleave=False)
        if level < len(model.splits):
            zero_conv(model.splits[level].prior_net, f"blocks.{level}.prior.", interleave=True)
    # The top prior: their last block's prior convolution applied to zeros (padded with ones).
    last = f"blocks.{config.levels - 1}.prior."
    weight, bias, scale = take(last + "conv.weight"), take(last + "conv.bias"), take(last + "scale")
    _, height, width = model.latent_shapes[-1]
    zeros = torch.zeros(1, weight.shape[1], height, width)
    prior = F.conv2d(F.pad(zeros, (1, 1, 1, 1), value=1.0), weight, bias) * torch.exp(3 * scale)
    model.top_prior.copy_(_interleave(prior[0]).unsqueeze(0))
    keys.refuse_unread()
    return model.eval()


def _layer_index(key: str) -> int | None:
    found = re.match(r"flow\.layers\.(\d+)\.", key)
    return int(found.group(1)) if found else None


def y0ast_config(state: dict[str, Tensor], hparams: dict | None = None) -> GlowConfig:
    """The ``GlowConfig`` of a y0ast/Glow-PyTorch ``state_dict`` (and its ``hparams.json``, where given):
    levels, depth, width, image shape, coupling, permutation, learned top and classes from the tensors."""
    hparams = hparams or {}
    if not isinstance(hparams, dict):
        raise ConversionError(f"the hparams must be a JSON object, got a {type(hparams).__name__}")
    if "prior_h" not in state or not any(k.startswith("flow.layers.") for k in state):
        raise ConversionError("not a y0ast/Glow-PyTorch checkpoint: no prior_h and flow.layers.* keys")
    indices = sorted({i for k in state if (i := _layer_index(k)) is not None})
    steps = [i for i in indices if f"flow.layers.{i}.actnorm.bias" in state]
    splits = [i for i in indices if f"flow.layers.{i}.conv.conv.weight" in state]
    levels = len(splits) + 1
    if not steps or len(steps) % levels:
        raise ConversionError(f"{len(steps)} flow steps do not divide into {levels} levels: not a Glow")
    first = f"flow.layers.{steps[0]}."
    squeezed = _sized(state, first + "actnorm.bias")[1]
    hidden = _sized(state, first + "block.0.conv.weight")[0]
    out = _sized(state, first + "block.4.conv.weight")[0]
    top_height, top_width = _sized(state, "prior_h")[2:]
    if first + "invconv.lower" in state:
        permutation = "lu"
    elif first + "invconv.weight" in state:
        permutation = "invconv"
    else:
        permutation = hparams.get("flow_permutation")
        if permutation == "shuffle":
            raise ConversionError("a shuffle model cannot be converted: y0ast/Glow-PyTorch draws the channel "
                                  "order at random and does not save it")  # fmt: skip
        if permutation != "reverse":
            raise ConversionError("the flow steps hold no 1x1 convolution: pass the run's hparams.json "
                                  "(--hparams) to tell reverse from shuffle")  # fmt: skip
    classes = state["project_ycond.linear.weight"].shape[1] if "project_ycond.linear.weight" in state else 0
    try:
        return GlowConfig(
            image_shape=(squeezed // 4, top_height * 2**levels, top_width * 2**levels),
            levels=levels,
            depth=len(steps) // levels,
            hidden_channels=hidden,
            coupling="affine" if out == squeezed else "additive",
            permutation=permutation,
            learn_top="learn_top_fn.conv.weight" in state,
            num_classes=classes,
            n_bits=hparams.get("n_bits", 8),
        )
    except ValueError as error:
        raise ConversionError(f"this checkpoint describes no Glow glowtorch can build: {error}") from None


def _sized(state: dict[str, Tensor], key: str) -> torch.Size:
    """The shape of the 4-d tensor ``state[key]``; ``ConversionError`` when it is missing or not 4-d."""
    value = state.get(key)
    if not isinstance(value, Tensor) or value.dim() != 4:
        shape = tuple(value.shape) if isinstance(value, Tensor) else "missing"
        raise ConversionError(f"not a y0ast/Glow-PyTorch checkpoint: {key} is {shape}, not a 4-d tensor")
    return value.shape


@torch.no_grad()
def from_y0ast(state: dict[str, Tensor], hparams: dict | None = None) -> Glow:
    """A glowtorch ``Glow`` computing the same ``log p(x)`` (and ``log p(x | y)``, encode/decode, class
    logits) as the y0ast/Glow-PyTorch model of ``state`` (its ``state_dict``; ``hparams``: its
    ``hparams.json``, needed only for models without 1x1 convolutions)."""
    keys = _StateKeys(state, "y0ast/Glow-PyTorch")
    state, take, used = keys.state, keys.take, keys.used
    config = y0ast_config(state, hparams)
    model = Glow(config)
    used.add("prior_h")

    def copy(target: Tensor, key: str) -> None:
        value = take(key)
        if value.numel() != target.numel():
            raise ConversionError(f"{key} has {tuple(value.shape)}, expected {tuple(target.shape)}")
        target.copy_(value.reshape(target.shape))

    indices = sorted({i for k in state if (i := _layer_index(k)) is not None})
    steps = iter(i for i in indices if f"flow.layers.{i}.actnorm.bias" in state)
    splits = iter(i for i in indices if f"flow.layers.{i}.conv.conv.weight" in state)
    for level, sequence in enumerate(model.levels):
        for step in sequence.layers:
            prefix = f"flow.layers.{next(steps)}."
            actnorm, conv, coupling = step.layers
            copy(actnorm.bias, prefix + "actnorm.bias")
            copy(actnorm.log_scale, prefix + "actnorm.logs")
            actnorm.initialized.fill_(True)
            if config.permutation == "lu":
                for ours, theirs in (("permutation", "p"), ("lower", "lower"), ("upper", "upper"), ("log_s", "log_s"),
                                     ("sign_s", "sign_s")):  # fmt: skip
                    copy(getattr(conv, ours), prefix + "invconv." + theirs)
            elif config.permutation == "invconv":
                copy(conv.weight, prefix + "invconv.weight")
            net = coupling.net
            copy(net.conv_in.weight, prefix + "block.0.conv.weight")
            copy(net.norm_in.bias, prefix + "block.0.actnorm.bias")
            copy(net.norm_in.log_scale, prefix + "block.0.actnorm.logs")
            copy(net.conv_hidden.weight, prefix + "block.2.conv.weight")
            copy(net.norm_hidden.bias, prefix + "block.2.actnorm.bias")
            copy(net.norm_hidden.log_scale, prefix + "block.2.actnorm.logs")
            net.norm_in.initialized.fill_(True)
            net.norm_hidden.initialized.fill_(True)
            copy(net.conv_out.conv.weight, prefix + "block.4.conv.weight")
            copy(net.conv_out.conv.bias, prefix + "block.4.conv.bias")
            copy(net.conv_out.log_scale, prefix + "block.4.logs")
        if level < len(model.splits):
            prefix = f"flow.layers.{next(splits)}.conv."
            prior = model.splits[level].prior_net
            copy(prior.conv.weight, prefix + "conv.weight")
            copy(prior.conv.bias, prefix + "conv.bias")
            copy(prior.log_scale, prefix + "logs")
    if config.learn_top:  # a zero-padded convolution of zeros: its bias, scaled, at every position
        bias, logs = take("learn_top_fn.conv.bias"), take("learn_top_fn.logs").flatten()
        used.add("learn_top_fn.conv.weight")
        top = _interleave(bias * torch.exp(3 * logs))
        model.top_prior.copy_(top.view(1, -1, 1, 1).expand_as(model.top_prior))
    if config.num_classes:
        for ours, theirs in ((model.label_prior, "project_ycond."), (model.classifier, "project_class.")):
            scale = torch.exp(3 * take(theirs + "logs"))
            weight, bias = take(theirs + "linear.weight") * scale[:, None], take(theirs + "linear.bias") * scale
            if ours is model.label_prior:  # their (mean | log-std) halves -> our interleaved rows
                weight, bias = _interleave(weight), _interleave(bias)
            ours.weight.copy_(weight)
            ours.bias.copy_(bias)
    keys.refuse_unread()
    return model.eval()
