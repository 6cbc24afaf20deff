"""Memory modes for training: standard backprop, per-step gradient checkpointing, and reversible
backpropagation, which keeps no activations of the flow steps at all.

Reversible backprop (as in RevNets): the forward pass runs a level's K steps without recording a graph
and keeps only the level's output. Backward walks the steps in reverse; for each it rebuilds the step's
input from its output with ``inverse`` (exact, up to float rounding), recomputes that one step with a
graph, and back-propagates through it. Peak memory no longer grows with K.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .layers import FlowSequence

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
        for layer in reversed(sequence.layers):
            with torch.no_grad():
                x, _ = layer.inverse(y)
            x = x.detach().requires_grad_(True)
            layer_params = [p for p in layer.parameters() if p.requires_grad]
            with torch.enable_grad():
                y_again, logdet = layer(x)
                found = torch.autograd.grad(
                    (y_again, logdet), [x, *layer_params], (grad_y, grad_logdet), allow_unused=True
                )
            grad_y = found[0]
            for p, g in zip(layer_params, found[1:], strict=True):
                if g is not None:
                    i = index[id(p)]
                    grads[i] = g if grads[i] is None else grads[i] + g
            y = x.detach()
        return (grad_y, None, *grads)


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
