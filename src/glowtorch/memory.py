"""Memory modes for training: standard backprop, per-step gradient checkpointing, and reversible
backpropagation, which keeps no activations of the flow steps at all.

Reversible backprop (as in RevNets): the forward pass runs a level's K steps without recording a graph
and keeps only the level's output. Backward walks the layers in reverse; for each it rebuilds the
layer's input from its output (exact, up to float rounding), recomputes that one layer with a graph,
and back-propagates through it. A coupling does both with one evaluation of its network, as its
conditioning half passes through unchanged; ActNorm and the 1x1 convolution, which are cheap, invert
and recompute. Peak memory no longer grows with K.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .layers import Coupling, FlowSequence

__all__ = ["MEMORY_MODES", "run_steps"]

MEMORY_MODES = ("standard", "checkpoint", "reversible")


class _ReversibleSequence(torch.autograd.Function):
    """``(x, *params) -> (y, logdet)`` for a FlowSequence, saving only ``y`` for backward."""

    @staticmethod
    def forward(ctx, x: Tensor, sequence: FlowSequence, *params: Tensor) -> tuple[Tensor, Tensor]:
        ctx.sequence = sequence
        ctx.params = params
        with torch.no_grad():
            y, logdet = sequence(x)
        ctx.save_for_backward(y)
        return y, logdet

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_logdet: Tensor):
        (y,) = ctx.saved_tensors
        sequence: FlowSequence = ctx.sequence
        params = ctx.params
        index = {id(p): i for i, p in enumerate(params)}
        grads: list[Tensor | None] = [None] * len(params)
        if grad_logdet is None:
            grad_logdet = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        if grad_y is None:
            grad_y = torch.zeros_like(y)
        for layer in reversed(_leaf_layers(sequence)):
            layer_params = [p for p in layer.parameters() if p.requires_grad]
            with torch.enable_grad():
                if isinstance(layer, Coupling):
                    inputs, y_again, logdet = layer.rebuild(y)
                else:
                    with torch.no_grad():
                        x, _ = layer.inverse(y)
                    inputs = (x.detach().requires_grad_(True),)
                    y_again, logdet = layer(inputs[0])
                pairs = [(out, g) for out, g in ((y_again, grad_y), (logdet, grad_logdet)) if out.requires_grad]
                found = torch.autograd.grad(
                    [out for out, _ in pairs], [*inputs, *layer_params], [g for _, g in pairs], allow_unused=True
                )
            n = len(inputs)
            grad_y = found[0] if n == 1 else torch.cat(found[:n], 1)
            for p, g in zip(layer_params, found[n:], strict=True):
                if g is not None:
                    i = index[id(p)]
                    grads[i] = g if grads[i] is None else grads[i] + g
            y = inputs[0].detach() if n == 1 else torch.cat([t.detach() for t in inputs], 1)
        return (grad_y, None, *grads)


def _leaf_layers(sequence: FlowSequence) -> list:
    """The invertible layers of ``sequence`` in order, nested sequences (flow steps) expanded."""
    layers = []
    for layer in sequence.layers:
        layers += _leaf_layers(layer) if isinstance(layer, FlowSequence) else [layer]
    return layers


def _checkpointed(sequence: FlowSequence, x: Tensor) -> tuple[Tensor, Tensor]:
    logdet = x.new_zeros(x.shape[0])
    for layer in sequence.layers:
        x, layer_logdet = checkpoint(layer, x, use_reentrant=False)
        logdet = logdet + layer_logdet
    return x, logdet


def run_steps(sequence: FlowSequence, x: Tensor, memory: str) -> tuple[Tensor, Tensor]:
    """``sequence(x)`` in the given memory mode; modes only differ while a graph is being recorded."""
    if memory == "standard" or not torch.is_grad_enabled():
        return sequence(x)
    if memory == "checkpoint":
        return _checkpointed(sequence, x)
    params = [p for p in sequence.parameters() if p.requires_grad]
    return _ReversibleSequence.apply(x, sequence, *params)
