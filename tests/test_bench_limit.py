"""``benchmarks/bench_limit.py``'s counting, on a tiny config: the work it attributes to a step and to each
convolution is the work worked out by hand, so its fractions of the limit mean what they say."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_limit  # noqa: E402


def test_flops_of_a_convolution_are_counted_as_by_hand() -> None:
    x = torch.randn(2, 3, 5, 5)
    w = torch.randn(4, 3, 3, 3)
    assert bench_limit.flops(lambda: F.conv2d(x, w, padding=1)) == 2 * 2 * 4 * 3 * 9 * 25
    a, b = torch.randn(6, 7), torch.randn(7, 8)
    assert bench_limit.flops(lambda: a @ b) == 2 * 6 * 7 * 8


def test_every_convolution_of_a_step_is_listed_with_its_work(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(bench_limit.CONFIGS, "tiny", ((1, 8, 8), dict(levels=2, depth=2, hidden_channels=16),
                                                      dict(batch_size=4, shift=1)))  # fmt: skip
    bench = bench_limit.make_trainer("tiny", "float32", str(tmp_path), compile_=False)
    bench_limit.train_step(bench)
    assert bench.trainer.step == 1 and not bench.compiled and bench.batch == 4
    rows = bench_limit.convolutions_alone(bench, repeats=1)
    # per level: each of 2 steps has a 3x3 input, a 1x1 hidden and a 3x3 output convolution in its coupling
    # and a 1x1 invertible convolution; the split's prior adds one 3x3 convolution on the first level
    assert sum(r["count"] for r in rows) == 2 * 2 * 4 + 1
    hidden = [r for r in rows if r["w"] == (16, 16, 1, 1)]
    assert [r["count"] for r in hidden] == [2, 2] and all(r["layout"] == "NHWC" for r in hidden)
    first = next(r for r in hidden if r["x"] == (4, 16, 4, 4))
    assert abs(first["gflop"] - 2 * 3 * 2 * (4 * 16 * 16 * 4 * 4) / 1e9) < 1e-12  # forward + two backward
    work = bench_limit.step_flops(bench)
    conv_work = sum(r["gflop"] for r in rows) * 1e9
    assert conv_work < work < 1.2 * conv_work  # the step's work is its convolutions and a little more
    spent = bench_limit.profile_of(lambda: bench_limit.train_step(bench), 1)
    assert spent["(wall time, profiled)"] > 0 and spent["convolution backward"] > 0
    assert bench_limit.kind_of("aten::mkldnn_convolution") == "convolution forward"
    assert bench_limit.kind_of("aten::sigmoid").startswith("other operations")
