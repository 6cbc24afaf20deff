"""Memory modes for training: standard backprop, per-step gradient checkpointing, and reversible
backpropagation, which keeps no activations of the flow steps at all.

Reversible backprop (as in RevNets): the forward pass runs a level's K steps without recording a graph
and keeps only the level's output. Backward walks the layers in reverse; for each it rebuilds the
layer's input from its output (exact, up to float rounding), recomputes that one layer with a graph,
and back-propagates through it. A coupling does both with one evaluation of its network, as its
conditioning half passes through unchanged; ActNorm and the 1x1 convolution, which are cheap, invert
and recompute. Peak memory no longer grows with K.

A context feature map (conditional models) reaches every layer that takes one, in all three modes; its
gradient (which trains the context encoder) is the sum over those layers.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .layers import Coupling, FlowSequence, call_layer

__all__ = ["MEMORY_MODES", "run_steps"]

MEMORY_MODES = ("standard", "checkpoint", "reversible")


class _ReversibleSequence(torch.autograd.Function):
    """``(x, context, *params) -> (y, logdet)`` for a FlowSequence, saving only ``y`` (and the context) for
    backward. ``context`` is None for unconditional models."""

    @staticmethod
    def forward(
        ctx, x: Tensor, context: Tensor | None, sequence: FlowSequence, *params: Tensor
    ) -> tuple[Tensor, Tensor]:
        ctx.sequence = sequence
        ctx.params = params
        with torch.no_grad():
            y, logdet = sequence(x, context)
        ctx.save_for_backward(y, context)
        return y, logdet

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_logdet: Tensor):
        y, context = ctx.saved_tensors
        sequence: FlowSequence = ctx.sequence
        wants_context = context is not None and ctx.needs_input_grad[1]
        if context is not None:
            context = context.detach().requires_grad_(wants_context)
        grad_context = None
        params = ctx.params
        index = {id(p): i for i, p in enumerate(params)}
        grads: list[Tensor | None] = [None] * len(params)
        if grad_logdet is None:
            grad_logdet = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        if grad_y is None:
            grad_y = torch.zeros_like(y)
        for layer in reversed(_leaf_layers(sequence)):
            layer_params = [p for p in layer.parameters() if p.requires_grad]
            extra = [context] if wants_context and getattr(layer, "takes_context", False) else []
            with torch.enable_grad():
                if isinstance(layer, Coupling):
                    inputs, y_again, logdet = layer.rebuild(y, context)
                else:
                    with torch.no_grad():
                        x, _ = call_layer(layer, y, context, inverse=True)
                    inputs = (x.detach().requires_grad_(True),)
                    y_again, logdet = call_layer(layer, inputs[0], context)
                pairs = [(out, g) for out, g in ((y_again, grad_y), (logdet, grad_logdet)) if out.requires_grad]
                found = torch.autograd.grad(
                    [out for out, _ in pairs], [*inputs, *extra, *layer_params], [g for _, g in pairs],
                    allow_unused=True,
                )  # fmt: skip
            n = len(inputs)
            grad_y = found[0] if n == 1 else torch.cat(found[:n], 1)
            if extra and found[n] is not None:
                grad_context = found[n] if grad_context is None else grad_context + found[n]
            n += len(extra)
            for p, g in zip(layer_params, found[n:], strict=True):
                if g is not None:
                    i = index[id(p)]
                    grads[i] = g if grads[i] is None else grads[i] + g
            y = inputs[0].detach() if n == 1 else torch.cat([t.detach() for t in inputs], 1)
        return (grad_y, grad_context, None, *grads)


def _leaf_layers(sequence: FlowSequence) -> list:
    """The invertible layers of ``sequence`` in order, nested sequences (flow steps) expanded."""
    layers = []
    for layer in sequence.layers:
        layers += _leaf_layers(layer) if isinstance(layer, FlowSequence) else [layer]
    return layers


def _checkpointed(sequence: FlowSequence, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
    logdet = x.new_zeros(x.shape[0])
    for layer in sequence.layers:
        x, layer_logdet = checkpoint(call_layer, layer, x, context, use_reentrant=False)
        logdet = logdet + layer_logdet
    return x, logdet


def run_steps(sequence: FlowSequence, x: Tensor, memory: str, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``sequence(x, context)`` in the given memory mode; modes only differ while a graph is being recorded."""
    if memory == "standard" or not torch.is_grad_enabled():
        return sequence(x, context)
    if memory == "checkpoint":
        return _checkpointed(sequence, x, context)
    params = [p for p in sequence.parameters() if p.requires_grad]
    return _ReversibleSequence.apply(x, context, sequence, *params)
