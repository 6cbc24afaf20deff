"""Each process's share of a step's batch, derived from ``(seed, step)`` alone so that a resumed run, or a
run on another number of processes, sees exactly the images and noise of an uninterrupted single process."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ..data import Dataset, epoch_order, random_flip, random_shift, step_generator
from ..distributed import Distributed
from ..preprocess import dequantize
from .config import TrainConfig

__all__ = ["Batch", "BatchSource"]


class Batch(NamedTuple):
    """One process's share of a step's batch: model inputs ``x`` ``(b, C, H, W)`` (dequantized), labels
    ``y`` ``(b,)`` of class-conditional models (else None), the images' ``indices`` ``(b,)`` in the
    training set, the ``context`` ``(b, C_c, h, w)`` of models conditioned on one (else None), made
    from the very images of ``x`` (after flips and shifts, before dequantization noise), and the uniform
    draws ``noise`` ``(b, C, H, W)`` that dequantized ``x`` (a variational dequantizer draws from them)."""

    x: Tensor
    y: Tensor | None
    indices: Tensor
    context: Tensor | None = None
    noise: Tensor | None = None


class BatchSource:
    """The batches of a run: ``config.batch_size`` images per step in a per-epoch order from ``config.seed``,
    with the configured flips, shifts and dequantization noise; this process reads only its share."""

    def __init__(
        self, data: Dataset, config: TrainConfig, n_bits: int, labels: bool, dist: Distributed, device: torch.device,
        context_of: Callable[[Tensor], Tensor] | None = None,
    ) -> None:  # fmt: skip
        self.data, self.config, self.n_bits, self.labels = data, config, n_bits, labels
        self.context_of = context_of
        self.dist, self.device = dist, device
        self.steps_per_epoch = len(data) // config.batch_size
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def order(self, epoch: int) -> Tensor:
        """The order of the training set in ``epoch`` ``(N,)`` (kept for the epoch in progress)."""
        if self._epoch != epoch:
            self._order, self._epoch = epoch_order(len(self.data), self.config.seed, epoch), epoch
        return self._order

    def global_indices(self, step: int) -> Tensor:
        """The training-set indices of the whole batch of ``step`` ``(batch_size,)``, over all processes."""
        epoch, index = divmod(step, self.steps_per_epoch)
        size = self.config.batch_size
        return self.order(epoch)[index * size : (index + 1) * size]

    def __call__(self, step: int) -> Batch:
        """This process's share of the global batch of ``step``: the same images and noise a single
        process would use for those positions of the batch."""
        config, dist = self.config, self.dist
        share = config.batch_size // dist.world_size
        mine = slice(dist.rank * share, (dist.rank + 1) * share)
        indices = self.global_indices(step)[mine]
        images = self.data.images[indices]  # only this process's share is read (a memory-mapped store)
        # The randomness is drawn for the whole global batch and this share's rows taken from it.
        batch = config.batch_size
        if config.flip:
            images = random_flip(images, step_generator(config.seed, step, stream=4), rows=(mine, batch))
        if config.shift:
            images = random_shift(images, config.shift, step_generator(config.seed, step, stream=6), rows=(mine, batch))
        if config.perturb:  # each pixel replaced by a random value with probability perturb (Ren et al. 2019)
            generator = step_generator(config.seed, step, stream=7)
            shape = (batch, *images.shape[1:])
            hit = (torch.rand(shape, generator=generator) < config.perturb)[mine]
            values = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)[mine]
            images = torch.where(hit, values, images)
        generator = step_generator(config.seed, step, stream=5)
        noise = torch.rand((batch, *images.shape[1:]), generator=generator, dtype=torch.float32)[mine]
        x = dequantize(images, self.n_bits, noise=noise)
        y = self.data.labels[indices].to(self.device) if self.labels else None
        context = self.context_of(images).to(self.device) if self.context_of else None
        return Batch(x.to(self.device), y, indices, context, noise.to(self.device))
