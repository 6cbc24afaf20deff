"""Fixture checkpoints of another Glow implementation, with the log-likelihoods and samples its own code
computes, for glowtorch's converter tests (``tests/test_convert.py``). The port's code is only run here,
never imported by glowtorch or its tests.

    git clone https://github.com/rosinality/glow-pytorch /tmp/glow-pytorch   # (commit 97081ff)
    python experiments/port_fixtures.py rosinality /tmp/glow-pytorch --out tests/fixtures/convert
    git clone https://github.com/y0ast/Glow-PyTorch /tmp/Glow-PyTorch         # (commit 13c7b01)
    python experiments/port_fixtures.py y0ast /tmp/Glow-PyTorch --out tests/fixtures/convert

For each variant it builds the port's model with its own classes, runs one forward pass (its ActNorm
initializes from that batch), then perturbs every parameter, the zero-initialized convolutions and
ActNorm's included, so that a wrong mapping cannot hide behind zeros or ones. It saves the checkpoint as
the port's train.py does (rosinality: ``torch.save`` of an ``nn.DataParallel``'s ``state_dict``, keys
starting with ``module.``; y0ast: the ``state_dict``, with the ``hparams.json`` its train.py writes) and,
beside it, the inputs, the port's ``log p(x)`` (nats per image; y0ast's class-conditional models: under
given labels, and their class logits), and what the port decodes from given latents (rosinality: its
samples from standard-normal noise; y0ast: ``flow.decode`` of the latents of the inputs, and of the
prior's means).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch
from torch import nn

ROSINALITY_VARIANTS = {
    # name: (image channels, levels, depth, width, affine, LU)
    "rosinality_affine_lu_gray": (1, 2, 2, 16, True, True),
    "rosinality_additive_invconv_rgb": (3, 3, 2, 16, False, False),
    "rosinality_affine_invconv_rgb": (3, 2, 3, 8, True, False),
}
IMAGE_SIZE, N_BITS, BATCH = 8, 5, 6


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def perturb(model: nn.Module, generator: torch.Generator) -> None:
    for name, parameter in model.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator)
        if name.endswith("actnorm.scale"):  # stays positive: multiplied by exp(noise)
            parameter.mul_(torch.exp(0.2 * noise))
        elif ".w_s" in name or name.endswith(".scale"):
            parameter.add_(0.1 * noise)
        else:
            parameter.add_(0.05 * noise)


def rosinality(checkout: Path, out: Path) -> dict:
    port = load_module(checkout / "model.py", "rosinality_model")
    summary = {}
    for name, (channels, levels, depth, width, affine, lu) in ROSINALITY_VARIANTS.items():
        torch.manual_seed(0)
        model = port.Glow(channels, depth, levels, affine=affine, conv_lu=lu)
        for block in model.blocks:  # the width is fixed at 512 in its constructor's default: rebuild smaller
            for flow in block.flows:
                flow.coupling = port.AffineCoupling(flow.coupling.net[0].in_channels * 2, width, affine=affine)
        generator = torch.Generator().manual_seed(1)
        x = torch.rand(BATCH, channels, IMAGE_SIZE, IMAGE_SIZE, generator=generator) - 0.5
        x = torch.floor((x + 0.5) * 2**N_BITS) / 2**N_BITS - 0.5 + torch.rand(x.shape, generator=generator) / 2**N_BITS
        with torch.no_grad():
            model(x)  # ActNorm initializes from this batch, as in the port's training
            perturb(model, generator)
            model.eval()
            log_p, logdet, z_outs = model(x)
            noise = [torch.randn(z.shape, generator=generator) for z in z_outs]
            samples = model.reverse(noise)
        torch.save(nn.DataParallel(model).state_dict(), out / f"{name}.pt")
        expected = {"x": x, "log_likelihood": (log_p + logdet).double(), "samples": samples}
        expected.update({f"noise{i}": n for i, n in enumerate(noise)})
        torch.save(expected, out / f"{name}_expected.pt")
        summary[name] = {"channels": channels, "levels": levels, "depth": depth, "width": width, "affine": affine,
                         "lu": lu, "image_size": IMAGE_SIZE, "n_bits": N_BITS,
                         "mean_log_likelihood": float((log_p + logdet).mean())}  # fmt: skip
    return summary


Y0AST_VARIANTS = {
    # name: (image channels, levels, depth, width, coupling, permutation, LU, learn_top, classes)
    "y0ast_affine_lu_rgb_conditional": (3, 2, 2, 16, "affine", "invconv", True, True, 10),
    "y0ast_additive_invconv_gray": (1, 3, 2, 8, "additive", "invconv", False, False, 0),
    "y0ast_affine_reverse_gray": (1, 2, 3, 16, "affine", "reverse", False, True, 0),
}


def y0ast(checkout: Path, out: Path) -> dict:
    sys.path.insert(0, str(checkout))  # its model.py imports its modules.py and utils.py
    port = load_module(checkout / "model.py", "y0ast_model")
    summary = {}
    for name, (channels, levels, depth, width, coupling, permutation, lu, learn_top, classes) in Y0AST_VARIANTS.items():
        torch.manual_seed(0)
        hparams = {"hidden_channels": width, "K": depth, "L": levels, "actnorm_scale": 1.0,
                   "flow_permutation": permutation, "flow_coupling": coupling, "LU_decomposed": lu,
                   "learn_top": learn_top, "y_condition": classes > 0, "y_weight": 0.01}  # fmt: skip
        model = port.Glow((IMAGE_SIZE, IMAGE_SIZE, channels), width, depth, levels, 1.0, permutation, coupling, lu,
                          classes or 10, learn_top, classes > 0)  # fmt: skip
        generator = torch.Generator().manual_seed(2)
        x = torch.floor(torch.rand(BATCH, channels, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 256) / 256 - 0.5
        x = x + torch.rand(x.shape, generator=generator) / 256  # dequantized, as its uniform_binning_correction
        y = torch.arange(BATCH) % max(classes, 1)
        y_onehot = torch.nn.functional.one_hot(y, max(classes, 1)).float() if classes else None
        with torch.no_grad():
            model.train()
            model.flow(x.clone(), logdet=torch.zeros(BATCH))  # ActNorm initializes from this batch
            perturb(model, generator)
            model.eval()
            z, objective = model.flow(x.clone(), logdet=torch.zeros(BATCH))  # log p(x), without its noise
            mean, logs = model.prior(x, y_onehot)
            log_likelihood = objective + port.gaussian_likelihood(mean, logs, z)
            decoded = model.flow.decode(z.clone(), temperature=0.0)  # its splits put back their prior means
            expected = {"x": x, "y": y, "log_likelihood": log_likelihood.double(), "decoded_at_t0": decoded,
                        "top_latent": z}  # fmt: skip
            if classes:
                expected["class_logits"] = model.project_class(z.mean(2).mean(2))
        torch.save(model.state_dict(), out / f"{name}.pt")
        (out / f"{name}_hparams.json").write_text(json.dumps(hparams, indent=2) + "\n")
        torch.save(expected, out / f"{name}_expected.pt")
        summary[name] = {"channels": channels, "levels": levels, "depth": depth, "width": width, "coupling": coupling,
                         "permutation": permutation, "lu": lu, "learn_top": learn_top, "classes": classes,
                         "image_size": IMAGE_SIZE, "mean_log_likelihood": float(log_likelihood.mean())}  # fmt: skip
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", choices=["rosinality", "y0ast"])
    parser.add_argument("checkout", type=Path, help="the port's checkout (its model.py is imported from there)")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/convert"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary = (rosinality if args.port == "rosinality" else y0ast)(args.checkout, args.out)
    (args.out / f"{args.port}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
