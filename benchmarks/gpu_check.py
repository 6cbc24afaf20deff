"""The CUDA path in one command, for the few minutes a GPU is lent: the CUDA tests, the speed benchmark, and
a timed training of the paper's MNIST model with its full-test-set bits/dim. Writes ``report.json`` and
``report.md`` to ``--out``; a part that fails or runs out of its time is reported as such and the rest
still runs.

    python benchmarks/gpu_check.py --out gpu-report --data-dir path/to/mnist      # on a GPU, ~9 minutes
    python benchmarks/gpu_check.py --out gpu-report --dry-run                     # the same on the CPU, tiny

``--dry-run`` runs the same code paths on the CPU at tiny sizes (the CUDA tests with
``GLOWTORCH_TEST_DEVICE=cpu`` but the two that repeat CPU tests, the benchmark's ``tiny`` configs, the
``digits`` preset for a few seconds):
``tests/test_gpu_check.py`` runs it, so the script cannot rot between GPU loans.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (configs, variants) of the speed benchmark: on a GPU the paper's configs; in the dry run the tiny ones.
SPEED = {
    "gpu": [
        ("A", "plain,fast,bf16,auto,compile"),
        ("B", "plain,fast,bf16,auto,compile"),
        ("paper", "plain,fast,bf16,auto"),
        ("C32", "fast,reversible"),
    ],  # fmt: skip
    "dry": [("tiny", "plain,fast,bf16,auto"), ("tiny32", "fast,reversible")],
}


def run(command: list[str], timeout: float, env: dict | None = None) -> dict:
    """Runs ``command``; returns its status (``ok``, ``failed`` or ``timed out``), seconds and output tail."""
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env={**os.environ, **(env or {})})  # fmt: skip
        status = "ok" if done.returncode == 0 else "failed"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        status = "timed out"
        output = (expired.stdout or b"").decode(errors="replace") + (expired.stderr or b"").decode(errors="replace")
    return {"status": status, "seconds": round(time.monotonic() - start, 1), "command": " ".join(command),
            "tail": output[-3000:]}  # fmt: skip


def environment(device: str) -> dict:
    import torch

    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__, "device": device,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}  # fmt: skip
    if device.startswith("cuda"):
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    bfloat16=torch.cuda.is_bf16_supported(),
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))  # fmt: skip
    return info


# Left out of the dry run: on the CPU they repeat tests/test_distributed.py's torchrun runs and
# tests/test_fast_paths.py's compiled decoding, and take half of its test time.
DRY_RUN_LEAVES_OUT = "not test_torchrun_with_one_process_per_device and not test_compiled_decoding_matches_eager"


def tests(out: Path, device: str, timeout: float, dry: bool = False) -> dict:
    """The CUDA tests (``-m cuda``) on ``device``, with their counts from pytest's JUnit XML."""
    xml = out / "tests.xml"
    select = ["-k", DRY_RUN_LEAVES_OUT] if dry else []
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_cuda.py",
                  *select, f"--junitxml={xml}"], timeout, env={"GLOWTORCH_TEST_DEVICE": device})  # fmt: skip
    if xml.exists():
        suite = ElementTree.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None
                  or case.find("error") is not None]  # fmt: skip
        result.update(counts=counts, failed=failed)
        if counts["tests"] and counts["skipped"] == counts["tests"]:
            result["status"] = "skipped"  # no device: nothing ran
    return result


def speed(out: Path, device: str, kind: str, timeout: float) -> dict:
    """``bench_speed.py`` per config (so a slow one does not take the others' results with it)."""
    parts, rows = [], []
    deadline = time.monotonic() + timeout
    steps = ["--steps", "3", "--warmup", "1", "--table-only"] if kind == "dry" else ["--steps", "5", "--warmup", "2"]
    for config, variants in SPEED[kind]:
        left = deadline - time.monotonic()
        if left < 5:
            parts.append({"config": config, "status": "not run (out of time)"})
            continue
        path = out / f"speed_{config}.json"
        result = run([sys.executable, "benchmarks/bench_speed.py", "--device", device, "--configs", config,
                      "--variants", variants, *steps, "--json", str(path)], left)  # fmt: skip
        if path.exists():
            rows += json.loads(path.read_text())["rows"]
        parts.append({"config": config, **result})
    status = "ok" if all(p.get("status") == "ok" for p in parts) else "partial"
    return {"status": status, "parts": parts, "rows": rows}


def training(out: Path, device: str, kind: str, data_dir: str | None, minutes: float, timeout: float) -> dict:
    """A timed training run of the ``mnist`` preset (``digits`` in the dry run) and its test bits/dim."""
    preset, dataset = ("digits", "digits") if kind == "dry" else ("mnist", "mnist")
    run_dir = out / "run"
    data = ["--data-dir", data_dir] if data_dir else []
    command = [sys.executable, "-m", "glowtorch", "train", "--preset", preset, *data, "--device", device,
               "--max-minutes", str(minutes), "--out", str(run_dir), "--no-progress"]  # fmt: skip
    if kind == "dry":
        command += ["--eval-every", "100"]
    result = run(command, timeout)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] if (
        run_dir / "metrics.jsonl").exists() else []  # fmt: skip
    if lines:
        last = lines[-1]
        result.update(steps=last["step"], train_images_per_s=last["train_images_per_s"],
                      elapsed_s=last["elapsed_s"], test_bpd_during_training=last.get("test_bpd"),
                      precision=last.get("precision"))  # fmt: skip
    if result["status"] == "ok":
        evaluation = run([sys.executable, "-m", "glowtorch", "evaluate", str(run_dir), "--dataset", dataset, *data,
                          "--device", device, "--no-progress"], timeout=300)  # fmt: skip
        found = re.search(r"([\d.]+) bits/dim over (\d+) images", evaluation["tail"])
        result["evaluate"] = evaluation
        if found:
            result.update(test_bpd=float(found.group(1)), test_images=int(found.group(2)))
    return result


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# GPU check, {env['date']}", "",
             f"Device: {env.get('gpu', env['device'])}; torch {env['torch']}"
             + (f", CUDA {env['cuda']}" if env.get("cuda") else "") + f"; Python {env['python']}."
             + (" **Dry run on the CPU at tiny sizes.**" if report["dry_run"] else ""), ""]  # fmt: skip
    t = report["tests"]
    counts = t.get("counts", {})
    lines += ["## CUDA tests", "", f"{t['status']} in {t['seconds']} s: {counts.get('tests', '?')} tests, "
              f"{counts.get('failures', '?')} failures, {counts.get('errors', '?')} errors, "
              f"{counts.get('skipped', '?')} skipped." + (f" Failed: {', '.join(t['failed'])}." if t.get("failed")
                                                          else ""), ""]  # fmt: skip
    s = report["speed"]
    lines += [
        "## Speed (`benchmarks/bench_speed.py`)",
        "",
        "| config | variant | train img/s | sample img/s | peak GiB | saved act. GiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        lines.append(f"| {r['config']} | {r['variant']} | {r['train_images_per_s']:.1f} | "
                     f"{r['sample_images_per_s']:.1f} | {r['peak_gib']:.2f} | {r['saved_gib']:.3f} |")  # fmt: skip
    lines += [""] + [f"- {p['config']}: {p['status']}" + (f" ({p['seconds']} s)" if "seconds" in p else "")
                     for p in s["parts"]] + [""]  # fmt: skip
    tr = report["training"]
    lines += ["## Timed training", "", f"`{tr['command']}`: {tr['status']} in {tr['seconds']} s; "
              f"{tr.get('steps', '?')} steps at {tr.get('train_images_per_s', '?')} img/s ({tr.get('precision')}); "
              f"test bits/dim {tr.get('test_bpd', '?')} over {tr.get('test_images', '?')} images "
              "(`glowtorch evaluate`, 1 draw).", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for report.json, report.md and the run")
    parser.add_argument("--dry-run", action="store_true", help="the same code paths on the CPU at tiny sizes")
    parser.add_argument("--data-dir", help="MNIST's IDX files, for the timed training (GPU run)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--train-minutes", type=float, default=4.5)
    args = parser.parse_args()
    kind = "dry" if args.dry_run else "gpu"
    device = "cpu" if args.dry_run else args.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict = {"dry_run": args.dry_run, "environment": environment(device)}

    def save() -> None:
        report["seconds"] = round(time.monotonic() - started, 1)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "report.md").write_text(markdown(report) + "\n") if {"tests", "speed", "training"} <= set(
            report
        ) else None

    # The GPU run's parts share a loan of minutes; the dry run's are limited only against hangs.
    report["tests"] = tests(out, device, timeout=150 if kind == "gpu" else 900, dry=args.dry_run)
    print(f"tests: {report['tests']['status']} ({report['tests']['seconds']} s)", flush=True)
    report["speed"] = speed(out, device, kind, timeout=170 if kind == "gpu" else 900)
    print(f"speed: {report['speed']['status']}", flush=True)
    minutes = 0.1 if kind == "dry" else args.train_minutes
    report["training"] = training(
        out, device, kind, args.data_dir, minutes, timeout=minutes * 60 + (120 if kind == "gpu" else 900)
    )
    print(f"training: {report['training']['status']}, test bits/dim {report['training'].get('test_bpd')}", flush=True)
    save()
    print(f"wrote {out / 'report.json'} and {out / 'report.md'} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
