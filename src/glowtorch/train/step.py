"""One optimizer step's parts: the objective as a module, the optimizer and its kernel, and the EMA copy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..likelihood import nll_bits_per_dim
from ..model import Glow

__all__ = ["TrainingObjective", "make_optimizer", "optimizer_kernel", "update_ema"]


def optimizer_kernel(name: str, params: list[nn.Parameter], save_memory: bool = False) -> dict[str, bool]:
    """How the optimizer's step is computed (never what). Adam: the fused kernel on CPU and CUDA (one
    pass over each parameter, no temporaries). Adamax: the foreach kernels (one call for all
    parameters), unless ``save_memory``: they allocate temporaries the size of all the gradients at
    once, so the memory-saving modes keep the per-parameter loop."""
    if name == "adamax":
        return {"foreach": not save_memory}
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return {"fused": fused, "foreach": not fused and not save_memory}


def make_optimizer(
    name: str, params: list[nn.Parameter], lr: float, save_memory: bool = False
) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` or ``Adamax`` (``name``: "adam" / "adamax") over ``params`` with the fastest
    step this device has that fits ``save_memory`` (:func:`optimizer_kernel`); same update as the
    default per-parameter loop."""
    cls = torch.optim.Adamax if name == "adamax" else torch.optim.Adam
    return cls(params, lr=lr, **optimizer_kernel(name, params, save_memory))


class TrainingObjective(nn.Module):
    """The training loss as a module, so DistributedDataParallel sees every parameter used in one forward.

    ``forward(x, y, context, noise) -> (loss, bits/dim (B,))``: the loss is the mean bits/dim of ``x`` (given
    the ``context`` for models conditioned on one; with a variational dequantizer, of ``x`` redrawn from
    ``q(u | x)`` by the uniform draws ``noise`` that made ``x``, minus ``log q``) plus, for class-conditional
    models, ``weight_y`` times the latent classifier's cross-entropy in bits per image (reference code); each
    image's bits/dim comes back too, for the training diagnostics.
    """

    def __init__(self, model: Glow, weight_y: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.weight_y = weight_y

    def forward(
        self, x: Tensor, y: Tensor | None = None, context: Tensor | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        config = self.model.config
        x, log_q = self.model.dequantized(x, noise)
        zs, logdet, log_prior = self.model(x, y, context=context)
        per_image = nll_bits_per_dim(log_prior + logdet - log_q, config.num_dims, config.n_bits)
        bpd = per_image.mean()
        if y is None:
            return bpd, per_image.detach()
        logits = self.model.classifier_logits(zs[-1])
        return bpd + self.weight_y * F.cross_entropy(logits, y) / math.log(2.0), per_image.detach()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, step: int, decay: float) -> None:
    """Polyak averaging of ``model``'s weights into ``ema`` after ``step``'s update, with the decay ramped
    up over the first steps (``min(decay, (1 + step) / (10 + step))``, reference code)."""
    rate = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - rate)
