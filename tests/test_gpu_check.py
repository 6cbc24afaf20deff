"""``benchmarks/gpu_check.py --dry-run``: the GPU check's code paths on the CPU, so it cannot rot between
GPU loans."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_writes_a_complete_report(tmp_path) -> None:
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=3000)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["dry_run"] and report["environment"]["device"] == "cpu"
    tests = report["tests"]
    assert tests["status"] == "ok" and tests["counts"]["tests"] >= 17 and tests["counts"]["failures"] == 0
    assert tests["counts"]["skipped"] == 0  # on the CPU every CUDA test ran
    speed = report["speed"]
    assert speed["status"] == "ok", speed["parts"]
    assert {(r["config"], r["variant"]) for r in speed["rows"]} >= {("tiny", "fast"), ("tiny32", "reversible")}
    assert all(r["train_images_per_s"] > 0 for r in speed["rows"])
    training = report["training"]
    assert training["status"] == "ok" and training["steps"] > 0
    assert math.isfinite(training["test_bpd"]) and training["test_images"] == 297
    assert abs(training["test_bpd"] - training["test_bpd_during_training"]) < 1e-3  # one likelihood, reported twice
    text = (out / "report.md").read_text()
    assert "Dry run" in text and "| tiny | fast |" in text and f"{training['test_bpd']}" in text
