"""A class-conditional model's top prior fitted by maximum likelihood to labelled images, given its flow."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .model import Glow
from .preprocess import dequantize

__all__ = ["fit_class_prior"]


@torch.no_grad()
def fit_class_prior(
    model: Glow, images: Tensor, labels: Tensor, batch_size: int = 500, seed: int = 0, progress: bool = False
) -> Glow:
    """A class-conditional model with a ``class_prior="spatial"`` top prior at its maximum-likelihood value
    for the model's flow: each class's prior becomes the mean and standard deviation, at every position,
    of the top latents of that class's ``images`` (uint8 ``(N, C, H, W)``, one dequantization draw each,
    from ``seed``, dequantized as the model's likelihoods are: by ``q(u | x)`` for variational
    dequantization, whose inputs the flow was trained on). The flow is untouched, so it stays exactly
    invertible, and the mean log-likelihood of ``images`` under their own classes can only rise for those
    draws.

    A spatial model is fitted in place and returned; a ``"channel"`` model is left as it is and a new
    spatial model with its flow weights is returned.

    Args:
        labels: ``(N,)`` each image's class; every class needs at least two images.
    """
    from tqdm import tqdm

    config = model.config
    if config.num_classes == 0:
        raise ValueError("fitting a class prior needs a class-conditional model")
    if config.condition:  # the context shifts each image's top prior: a per-class fit alone is not the optimum
        raise ValueError("fitting a class prior is for models without a context (trained without --condition)")
    labels = labels.long().cpu()
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels: give one label per image")
    config.check_label_range(labels)
    counts = torch.bincount(labels, minlength=config.num_classes).double()
    if (counts < 2).any():
        short = ", ".join(str(c) for c in torch.nonzero(counts < 2).flatten().tolist())
        raise ValueError(f"every class needs at least two labelled images; class(es) {short} have fewer")
    if config.class_prior != "spatial":
        spatial = Glow(dataclasses.replace(config, class_prior="spatial"), model.compute).to(model.top_prior)
        flow = {k: v for k, v in model.state_dict().items() if not k.startswith("label_prior.")}
        missing, unexpected = spatial.load_state_dict(flow, strict=False)  # only label_prior differs: set below
        if unexpected or not all(key.startswith("label_prior.") for key in missing):
            raise RuntimeError(f"the spatial prior's model does not take this flow: {missing + unexpected}")
        model = spatial
    model.eval()
    ref = model.top_prior
    shape = (config.num_classes, model.top_channels, *ref.shape[2:])
    sums, squares = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    with model.full_precision():  # a maximum-likelihood fit of the model's own (float32) likelihood
        for start in tqdm(range(0, len(images), batch_size), desc="fitting", leave=False, disable=not progress):
            batch = images[start : start + batch_size]
            noise = torch.rand(batch.shape, generator=generator)  # the draws dequantize(generator=...) makes
            x = dequantize(batch, config.n_bits, noise=noise).to(ref)
            x, _ = model.dequantized(x, noise.to(x))  # the model's own dequantization: q(u | x) if variational
            y = labels[start : start + batch_size]
            top = model(x, y.to(ref.device))[0][-1].double().cpu()  # the top latent does not depend on y
            sums.index_add_(0, y, top)
            squares.index_add_(0, y, top * top)
    view = (-1, 1, 1, 1)
    mean = sums / counts.view(view)
    variance = (squares / counts.view(view) - mean * mean).clamp_min(1e-12)
    # top_prior_params: channel 2k of (top_prior + label_prior(onehot)) is mean k, 2k + 1 its log-std.
    per_class = torch.stack([mean, 0.5 * variance.log()], dim=2).reshape(config.num_classes, -1)
    model.top_prior.zero_()
    model.label_prior.weight.copy_(per_class.T.to(ref))
    model.label_prior.bias.zero_()
    return model
