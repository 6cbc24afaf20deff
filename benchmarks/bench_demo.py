"""Per-action latency of ``glowtorch demo``'s computations (what each button or slider runs, picture
conversion included), without the browser and the web server's own few milliseconds::

    python benchmarks/bench_demo.py [MODEL] [--repeats 20]

MODEL defaults to ``pretrained:mnist`` (with ``pretrained:mnist-sr4`` in its Super-resolve tab). Prints the
median and the slowest of ``--repeats`` calls per action, after one warm-up call (the first call of an action
builds caches: the float64 twin, the histogram picture).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from glowtorch.demo import Explorer, show


def timed(function, repeats: int) -> tuple[float, float]:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, max(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="pretrained:mnist")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    start = time.perf_counter()
    explorer = Explorer.from_checkpoint(args.model)
    print(f"{args.model}: loaded in {time.perf_counter() - start:.2f} s; torch threads {torch.get_num_threads()}")
    label = 3 if explorer.conditional else None
    examples = explorer.examples if explorer.examples is not None else explorer.sample(0.7, 0, label, 3)
    a, b = examples[0], examples[1]
    canvas = np.zeros((280, 280, 4), np.uint8)
    canvas[60:220, 130:150] = (0, 0, 0, 255)
    counter = iter(range(10**9))

    def fresh_drawing() -> dict:  # a new image each time: no cached latents
        drawing = canvas.copy()
        drawing[100 + next(counter) % 60, 100:180] = (0, 0, 0, 255)
        return {"composite": drawing}

    def read() -> None:
        image, _ = explorer.prepare(fresh_drawing())
        reading = explorer.read(image, label)
        show(reading.reconstruction.unsqueeze(0))
        if explorer.test_scores is not None:
            explorer.histogram(reading.bits_per_dim)

    names = list(explorer.directions)
    actions = {
        "sample 32 (Sample button)": lambda: show(explorer.sample(0.7, next(counter), label, 32), columns=8),
        "read a new drawing (reconstruction, bits/dim, histogram)": read,
        "interpolation slider (one frame)": lambda: show(
            explorer.frame(a, b, (next(counter) % 20) / 20, "slerp", label).unsqueeze(0)
        ),
        "interpolation ends changed (frame and 9-image path)": lambda: explorer.interpolate(a, b, 0.5, "slerp", label),
    }
    if names:
        actions[f"edit slider ({len(names)} directions)"] = lambda: show(
            explorer.edit(a, {n: 0.1 * (next(counter) % 7) for n in names}, label).unsqueeze(0)
        )
    if explorer.conditional:
        actions["same handwriting, another digit (10 labels)"] = lambda: show(explorer.relabel(a, label))
    if explorer.superres is not None:

        def superresolve() -> None:  # Super-resolve: 16 samples of a new drawing's 7x7 version, each scored
            image, _ = explorer.prepare(fresh_drawing())
            result = explorer.superresolve(image, 0.6, next(counter), 16)
            show(result.samples, columns=8)

        actions["super-resolve a new drawing (16 samples with bits/dim)"] = superresolve
    for name, action in actions.items():
        median, worst = timed(action, args.repeats)
        print(f"{name:58s} median {median:7.1f} ms   slowest {worst:7.1f} ms")


if __name__ == "__main__":
    main()
