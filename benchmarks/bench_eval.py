"""What evaluating in float32 costs against bfloat16 coupling networks: the seconds to score test images
with a model's coupling networks in float32 (how glowtorch reports every likelihood) and in bfloat16 (how a
bfloat16 run's training steps compute them), on the same images and noise, and the two mean bits/dim.

    python benchmarks/bench_eval.py [MODEL] [--data-dir ../shared/data/mnist] [--images 2000]

Without --data-dir the embedded digits' shape is not MNIST's, so the images are uniform noise of the
model's shape (the timing holds; the bits/dim are those of noise).
"""

from __future__ import annotations

import argparse
import time

import torch

from glowtorch import dequantize, load_model
from glowtorch.data import load_dataset_for
from glowtorch.evaluate import score_images
from glowtorch.likelihood import nll_bits_per_dim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="pretrained:mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    model = load_model(args.model).eval()
    config = model.config
    if args.data_dir:
        images = load_dataset_for(config.image_shape, "mnist", args.data_dir, train=False).images[: args.images]
    else:
        images = torch.randint(0, 256, (args.images, *config.image_shape), dtype=torch.uint8)
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(0))
    rows = []
    for precision in ("float32", "bfloat16"):  # the same images and noise in both
        model.set_compute(precision=precision)
        score_images(model, images[: args.batch_size])  # warm-up
        start = time.perf_counter()
        total = 0.0
        with torch.inference_mode():
            for s in range(0, len(images), args.batch_size):
                x = dequantize(images[s : s + args.batch_size], config.n_bits, noise=noise[s : s + args.batch_size])
                total += nll_bits_per_dim(model.log_prob(x), config.num_dims, config.n_bits).double().sum().item()
        rows.append((precision, time.perf_counter() - start, total / len(images)))
    print(f"{args.model}: {len(images)} images, batch {args.batch_size}, {torch.get_num_threads()} threads")
    for precision, seconds, bpd in rows:
        print(f"  {precision:9s} {seconds:6.2f} s ({len(images) / seconds:6.0f} images/s)  {bpd:.4f} bits/dim")
    print(
        f"  float32 / bfloat16 time: x{rows[0][1] / rows[1][1]:.2f}; bits/dim differ by {rows[1][2] - rows[0][2]:+.5f}"
    )


if __name__ == "__main__":
    main()
