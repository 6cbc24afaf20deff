"""Which MNIST recipe gives the lowest test bits/dim for a fixed CPU budget?

Every arm is the ``mnist-cpu`` preset with affine coupling and uniform dequantization (``START_MODEL``: the
preset as the search first found it) and one change (or none: ``base``), trained for the same CPU
time (``--minutes`` of this process's CPU time, ``TrainConfig.budget_clock="cpu"``, so runs that share
the machine, or other work beside them, still get equal budgets; the cosine decay is paced to it), then
evaluated on the whole test split: the one-sample bound (the figure tables report) and the
importance-weighted bound over ``--importance-samples`` draws, from the EMA weights as saved.

Runs live in ``OUT/runs/ARM-seedS``, one process each (``--parallel`` at a time, ``--threads`` threads
each): a run with its ``recipe.json`` is reused, an interrupted one resumes from its checkpoint, so a
killed search continues where it stopped (another budget needs another ``--out``). The script
then writes, over every finished run in ``OUT`` (so invocations with other arms or seeds add to one
table), ``OUT/results.md`` (per arm: bits/dim mean over seeds and per seed, importance-weighted,
steps, CPU-minutes, parameters) and ``OUT/recipes.png`` (test bits/dim against CPU-hours, one line per
run, from each run's evaluations and its final one).

    python experiments/recipe_search.py --smoke --out runs/recipes-smoke       # tiny arms on the digits
    python experiments/recipe_search.py --data-dir path/to/mnist --out ../runs/recipes \\
        --minutes 60 --seeds 0,1 --parallel 2 --threads 1
    python experiments/recipe_search.py --list                                  # the arms
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Where the arms start: the mnist-cpu preset with these values over it, the preset as this search first
# found it. Its winners, variational dequantization and spline coupling, became the preset's; the arms below
# keep measuring changes from the recipe they were measured against (docs/recipes.md).
START_MODEL = {"coupling": "affine", "dequantization": "uniform"}
# name -> (what changes, model values, training values): each over the starting point
ARMS: dict[str, tuple[str, dict, dict]] = {
    "base": ("the starting point: mnist-cpu with affine coupling and uniform dequantization", {}, {}),
    "variational": ("variational dequantization (16 channels, 2 couplings)", {"dequantization": "variational"}, {}),
    "additive": ("additive coupling", {"coupling": "additive"}, {}),
    "spline": ("rational-quadratic spline coupling (8 bins on [-3, 3])", {"coupling": "spline"}, {}),
    "adamax": ("Adamax (the reference code's optimizer)", {}, {"optimizer": "adamax"}),
    "lr-2e-3": ("peak learning rate 2e-3", {}, {"lr": 2e-3}),
    "lr-5e-4": ("peak learning rate 5e-4", {}, {"lr": 5e-4}),
    "batch-64": ("batch 64", {}, {"batch_size": 64}),
    "batch-16": ("batch 16", {}, {"batch_size": 16}),
    "no-shift": ("no random translations", {}, {"shift": 0}),
    "narrow-deep": ("width 64, depth 16", {"hidden_channels": 64, "depth": 16}, {}),
    "wide-shallow": ("width 192, depth 4", {"hidden_channels": 192, "depth": 4}, {}),
    "constant-lr": ("no decay (constant after warmup)", {}, {"decay_steps": None}),
    "variational-lr-2e-3": (
        "variational dequantization and peak learning rate 2e-3",
        {"dequantization": "variational"},
        {"lr": 2e-3},
    ),
}
SMOKE = dict(dataset="digits", minutes=0.15, seeds="0", importance_samples=2, eval_images=64,
             arms="base,variational")  # fmt: skip
SMOKE_MODEL = dict(levels=2, depth=2, hidden_channels=16, dequantizer_channels=4, dequantizer_depth=1)
SMOKE_TRAIN = dict(batch_size=16, warmup_steps=20, compile=False, init_images=64, eval_every=10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated arm names (--list shows them)")
    p.add_argument("--list", action="store_true", help="print the arms and exit")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="runs/recipes")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--minutes", type=float, default=60.0, help="CPU-minutes of training per run (all its threads)")
    p.add_argument("--threads", type=int, default=1, help="threads per run")
    p.add_argument("--parallel", type=int, default=1, help="runs at once")
    p.add_argument("--importance-samples", type=int, default=4, help="draws of the importance-weighted bound")
    p.add_argument("--eval-images", type=int, help="score only the first N test images (default: all)")
    p.add_argument("--smoke", action="store_true", help="two tiny arms on the embedded digits, in about a minute")
    p.add_argument("--run", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)  # one run, in this process
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        p.error(f"unknown arm {unknown[0]!r}: choose from {', '.join(ARMS)}")
    if args.minutes <= 0 or args.threads < 1 or args.parallel < 1 or args.importance_samples < 1:
        p.error("--minutes, --threads, --parallel and --importance-samples must be positive")
    return args


def run_settings(args: argparse.Namespace, arm: str, seed: int) -> tuple[str, dict, dict]:
    """(dataset, model values, training values) of one run: mnist-cpu, the arm's change, the budget."""
    from glowtorch.presets import preset_settings

    _, model, training = ARMS[arm]
    model = {**START_MODEL, **model}
    if args.smoke:
        model, training = {**SMOKE_MODEL, **model}, {**SMOKE_TRAIN, **training}
    settings = preset_settings("mnist-cpu", args.dataset, model=model, train=training)
    values = dict(settings.train)
    values.update(max_minutes=args.minutes, budget_clock="cpu", epochs=None, steps=None, seed=seed,
                  temperatures=(0.7,), samples_per_row=8)  # fmt: skip
    return settings.dataset, dict(settings.model), values


def run_one(args: argparse.Namespace, arm: str, seed: int) -> dict:
    """Trains (or resumes) one run and evaluates it; writes and returns its ``recipe.json`` record."""
    import torch

    from glowtorch import GlowConfig, keep_freed_memory, load_model
    from glowtorch.checkpoint import checkpoint_paths
    from glowtorch.data import Dataset, load_dataset
    from glowtorch.evaluate import evaluate_bits_per_dim
    from glowtorch.train import TrainConfig, train

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    dataset, model_values, train_values = run_settings(args, arm, seed)
    train_data = load_dataset(dataset, args.data_dir, train=True)
    test_data = load_dataset(dataset, args.data_dir, train=False)
    run_dir = Path(args.out) / "runs" / f"{arm}-seed{seed}"
    model_config = GlowConfig(image_shape=train_data.image_shape, **model_values)
    resume = bool(checkpoint_paths(run_dir))
    last = train(model_config, TrainConfig(**train_values), train_data, test_data, run_dir, resume=resume,
                 progress=False, log=lambda *a: None)  # fmt: skip
    model = load_model(run_dir)
    if args.eval_images:
        labels = None if test_data.labels is None else test_data.labels[: args.eval_images]
        test_data = Dataset(test_data.images[: args.eval_images], labels)
    result = evaluate_bits_per_dim(model, test_data, draws=args.importance_samples)
    record = {
        "arm": arm,
        "seed": seed,
        "change": ARMS[arm][0],
        "minutes": args.minutes,
        "test_images": len(test_data),
        "eval_images": args.eval_images,
        "test_bpd": result["test_bpd"],  # the mean over draws of the one-sample bound
        "test_bpd_importance_weighted": result["test_bpd_importance_weighted"],
        "importance_samples": args.importance_samples,
        "steps": last["step"],
        "cpu_minutes": last["elapsed_s"] / 60,
        "parameters": sum(p.numel() for p in model.parameters()),
        "precision": json.loads((run_dir / "train_config.json").read_text()).get("resolved", {}).get("precision"),
        "threads": args.threads,
    }
    (run_dir / "recipe.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def run_search(args: argparse.Namespace, log=print) -> None:
    """Every (arm, seed) run: reused when its recipe.json holds this budget, else trained in a child process
    (``--parallel`` at a time); ``finished_runs`` then reads the records."""
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    grid = [(arm, seed) for arm in args.arms.split(",") for seed in seeds]
    pending, running, failed = [], [], []
    for arm, seed in grid:
        record = read_record(args, arm, seed)
        if record is None:
            pending.append((arm, seed))
    log(f"{len(grid) - len(pending)} of {len(grid)} runs done already; {len(pending)} to train")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    base = [sys.executable, str(Path(__file__).resolve())] + forwarded(args)
    while pending or running:
        while pending and len(running) < args.parallel:
            arm, seed = pending.pop(0)
            log_path = Path(args.out) / "runs" / f"{arm}-seed{seed}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as out:
                process = subprocess.Popen(base + ["--run", arm, str(seed)], env=env, stdout=out, stderr=out)
            running.append((arm, seed, process, time.monotonic()))
            log(f"started {arm}-seed{seed}")
        time.sleep(0.5)
        for entry in list(running):
            arm, seed, process, started = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            record = read_record(args, arm, seed)
            if process.returncode or record is None:
                failed.append(f"{arm}-seed{seed}")
                log(f"{arm}-seed{seed} failed (exit {process.returncode}): see its .log")
            else:
                log(f"{arm}-seed{seed}: {record['test_bpd']:.4f} bits/dim, {record['steps']} steps "
                    f"({(time.monotonic() - started) / 60:.1f} min)")  # fmt: skip
    if failed:
        raise RuntimeError(f"{len(failed)} runs failed: {', '.join(failed)}")


def forwarded(args: argparse.Namespace) -> list[str]:
    """The flags a child run needs to compute the same run as its parent would."""
    flags = ["--dataset", args.dataset, "--out", args.out, "--minutes", repr(args.minutes), "--threads",
             str(args.threads), "--importance-samples", str(args.importance_samples)]  # fmt: skip
    for flag, value in (("--data-dir", args.data_dir), ("--eval-images", args.eval_images)):
        if value is not None:
            flags += [flag, str(value)]
    return flags + (["--smoke"] if args.smoke else [])


def read_record(args: argparse.Namespace, arm: str, seed: int) -> dict | None:
    """A finished run's record, if it was evaluated after training for this budget on these images."""
    path = Path(args.out) / "runs" / f"{arm}-seed{seed}" / "recipe.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("minutes") != args.minutes:
        raise SystemExit(f"{path} was trained for {record.get('minutes')} CPU-minutes, not {args.minutes}: "
                         "give another --out for another budget")  # fmt: skip
    same = record.get("importance_samples") == args.importance_samples and record.get("eval_images") == args.eval_images
    return record if same else None  # evaluated otherwise: evaluated again (training is done: resumed, it stops)


def finished_runs(args: argparse.Namespace) -> list[dict]:
    """The records of every finished run in ``OUT/runs`` evaluated as this invocation evaluates (several
    invocations, e.g. two seeds of some arms and one of others, fill one table), in arm order."""
    found = []
    for path in sorted((Path(args.out) / "runs").glob("*-seed*/recipe.json")):
        arm, seed = path.parent.name.rsplit("-seed", 1)
        if arm in ARMS and seed.isdigit() and (record := read_record(args, arm, int(seed))) is not None:
            found.append(record)
    order = list(ARMS)
    return sorted(found, key=lambda r: (order.index(r["arm"]), r["seed"]))


def summarize(records: list[dict]) -> list[dict]:
    """One row per arm: mean and per-seed bits/dim, importance-weighted mean, steps per seed, CPU-minutes."""
    rows = []
    for arm in dict.fromkeys(r["arm"] for r in records):
        runs = [r for r in records if r["arm"] == arm]
        rows.append({
            "arm": arm,
            "change": ARMS[arm][0],
            "test_bpd": statistics.fmean(r["test_bpd"] for r in runs),
            "per_seed": [r["test_bpd"] for r in runs],
            "importance_weighted": statistics.fmean(r["test_bpd_importance_weighted"] for r in runs),
            "steps": [r["steps"] for r in runs],  # per seed: the same budget buys more or fewer on a given day
            "cpu_minutes": statistics.fmean(r["cpu_minutes"] for r in runs),
            "parameters": runs[0]["parameters"],
            "precision": runs[0].get("precision"),
        })  # fmt: skip
    return sorted(rows, key=lambda r: r["test_bpd"])


def write_table(rows: list[dict], records: list[dict], path: Path, command: str) -> Path:
    k = records[0]["importance_samples"]
    lines = [
        f"| arm | change from the starting point | test bits/dim (mean) | per seed | importance-weighted ({k}) "
        "| steps (per seed) "
        "| CPU-minutes | parameters | precision |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = ", ".join(f"{v:.4f}" for v in r["per_seed"])
        steps = ", ".join(f"{n:,}" for n in r["steps"])
        lines.append(
            f"| {r['arm']} | {r['change']} | {r['test_bpd']:.4f} | {per_seed} | {r['importance_weighted']:.4f} "
            f"| {steps} | {r['cpu_minutes']:.1f} | {r['parameters']:,} | {r['precision']} |"
        )
    images = records[0]["test_images"]
    path.write_text(f"Command: `{command}`\n\nTest images: {images}.\n\n" + "\n".join(lines) + "\n")
    return path


def curves(out: Path, records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Per run, (CPU-hours, test bits/dim) from its metrics' evaluations, ending at its final evaluation."""
    from glowtorch.plots import read_metrics

    result = {}
    for r in records:
        name = f"{r['arm']}-seed{r['seed']}"
        points = [(m["elapsed_s"] / 3600, m["test_bpd"]) for m in read_metrics(out / "runs" / name / "metrics.jsonl")
                  if "test_bpd" in m]  # fmt: skip
        result[name] = points[:-1] + [(r["cpu_minutes"] / 60, r["test_bpd"])]
    return result


def plot(out: Path, records: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5), constrained_layout=True)
    colours = {arm: f"C{i % 10}" for i, arm in enumerate(dict.fromkeys(r["arm"] for r in records))}
    styles = ["-", "--", ":", "-."]
    labelled = set()
    for name, points in curves(out, records).items():
        arm, seed = name.rsplit("-seed", 1)
        hours, bpd = [p[0] for p in points], [p[1] for p in points]
        axis.plot(hours, bpd, marker="o", markersize=3, color=colours[arm], linestyle=styles[int(seed) % 4],
                  label=None if arm in labelled else arm)  # fmt: skip
        labelled.add(arm)
    finals = [r["test_bpd"] for r in records]
    axis.set_ylim(min(finals) - 0.05, max(finals) + 0.4)
    axis.set_xlabel("CPU-hours (this process's CPU time)")
    axis.set_ylabel("test bits/dim")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title("MNIST recipes at equal CPU budget (one line per run)")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, (change, _, _) in ARMS.items():
            print(f"{name:14s} {change}")
        return 0
    if args.run:
        run_one(args, args.run[0], int(args.run[1]))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_search(args)
    records = finished_runs(args)
    rows = summarize(records)
    command = "python experiments/recipe_search.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = write_table(rows, records, out / "results.md", command)
    figure = plot(out, records, out / "recipes.png")
    print(f"wrote {table} and {figure}")
    for r in rows:
        print(f"{r['arm']:14s} {r['test_bpd']:.4f} (importance-weighted {r['importance_weighted']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
