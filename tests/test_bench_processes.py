"""``benchmarks/bench_processes.py``: its layouts start the processes they name, which train together
(DistributedDataParallel over gloo) and report one measurement; malformed layouts are refused."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_processes  # noqa: E402


def test_two_one_thread_processes_train_one_job_and_report_it() -> None:
    args = argparse.Namespace(config="smoke", precision="float32", steps=2, warmup=1, compile=False)
    result = bench_processes.run_layout(args, processes=2, threads=1)
    assert result["layout"] == "2x1" and result["batch"] == 4 and result["precision"] == "float32"
    # the job's figures: 2 steps of the global batch of 4, over the time both processes took
    assert result["images_per_s"] == pytest.approx(4 * 1e3 / result["step_ms"])
    assert result["cpu_ms_per_step"] > 0


@pytest.mark.parametrize("text", ["2", "2x", "x1", "0x2", "2x0", "axb", "2x1x1"])
def test_malformed_layouts_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        bench_processes.parse_layout(text)


def test_a_layout_names_processes_then_threads() -> None:
    assert bench_processes.parse_layout("2x1") == (2, 1) and bench_processes.parse_layout("1X4") == (1, 4)
