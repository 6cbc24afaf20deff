"""``benchmarks/bench_speed.py``: the rosinality variant builds the port's model at the config's width and
measures it as glowtorch's variants are measured; it needs a checkout, and says so."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_speed  # noqa: E402

# A stand-in with rosinality/glow-pytorch's interface (Glow(in_channel, n_flow, n_block, affine, conv_lu)
# with blocks -> flows -> coupling.net[0]; AffineCoupling(in_channel, filter_size); forward returning
# (log_p, logdet, z_outs); reverse(z_list)): a per-channel scale and one coupling network per flow.
FAKE_PORT = """
import torch
from torch import nn

class AffineCoupling(nn.Module):
    def __init__(self, in_channel, filter_size=512, affine=True):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channel // 2, filter_size, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(filter_size, in_channel // 2, 1))

class Flow(nn.Module):
    def __init__(self, in_channel):
        super().__init__()
        self.coupling = AffineCoupling(in_channel)

class Block(nn.Module):
    def __init__(self, n_flow, in_channel):
        super().__init__()
        self.flows = nn.ModuleList(Flow(in_channel) for _ in range(n_flow))

class Glow(nn.Module):
    def __init__(self, in_channel, n_flow, n_block, affine=True, conv_lu=True):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(in_channel))
        self.blocks = nn.ModuleList(Block(n_flow, 4 * in_channel) for _ in range(n_block))

    def forward(self, x):
        c = x.shape[1]
        h = x.reshape(x.shape[0], 4 * c, x.shape[2] // 2, x.shape[3] // 2)
        for block in self.blocks:
            for flow in block.flows:
                a, b = h.chunk(2, 1)
                h = torch.cat([a, b + flow.coupling.net(a)], 1)
        z = h * self.log_scale.exp().repeat(4).view(1, -1, 1, 1)
        logdet = 4 * z[0, 0].numel() * self.log_scale.sum()
        return -0.5 * z.pow(2).flatten(1).sum(1), logdet, [z]

    def reverse(self, z_list):
        return z_list[0]
"""


def test_the_rosinality_variant_runs_the_port_at_the_configs_width(tmp_path) -> None:
    (tmp_path / "model.py").write_text(FAKE_PORT)
    settings = dict(bench_speed.CONFIGS["tiny"])
    batch = settings.pop("batch")
    spec = {"architecture": settings, "batch": batch, "device": "cpu", "steps": 2, "warmup": 1,
            "rosinality": str(tmp_path)}  # fmt: skip
    result = bench_speed.measure_rosinality(spec)
    width, half = settings["hidden_channels"], 2 * settings["image_shape"][0]  # half of the squeezed channels
    per_flow = half * width * 9 + width + width * half + half  # the two convolutions, rebuilt at the width
    flows = settings["levels"] * settings["depth"]
    assert result["params_m"] * 1e6 == pytest.approx(flows * per_flow + settings["image_shape"][0])
    assert result["train_images_per_s"] == pytest.approx(batch / result["step_s"])
    assert result["sample_images_per_s"] > 0 and result["peak_gib"] >= result["state_gib"] > 0
    assert result["train_gflop"] > 0  # glowtorch's count of the same architecture, for the GFLOP/s column
    assert set(result) >= {"work_gib", "first_step_s", "loss_bpd", "sample_gflop"}


def test_the_rosinality_variant_without_a_checkout_is_refused() -> None:
    with pytest.raises(SystemExit, match="--rosinality CHECKOUT"):
        bench_speed.run_one("tiny", "rosinality", "cpu", 1, 0, rosinality=None)
