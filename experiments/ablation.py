"""The Glow paper's Figure 3 ablation: the channel permutation before each coupling (reverse, fixed random
shuffle, plain 1x1 convolution, LU 1x1 convolution) for additive and affine coupling, at equal budget.

Every run of the grid (permutation x coupling x seed) uses the same data, model size, optimizer, schedule
and number of steps; only the permutation, the coupling and the seed change. Runs live in
``OUT/runs/COUPLING-PERMUTATION-seedS``: a finished run is reused, an interrupted one resumes from its
checkpoint, so a killed grid continues where it stopped. The script then writes ``OUT/results.md``
(final test bits/dim as mean and spread over seeds, steps, wall time, images/s) and ``OUT/ablation.png``
(test bits/dim against step and against wall time, one colour per permutation, one line style per
coupling, each seed a thin line and the mean a thick one).

    python experiments/ablation.py --smoke --out runs/ablation-smoke          # tiny grid on the digits
    python experiments/ablation.py --dataset mnist --data-dir path/to/mnist --out runs/ablation \\
        --levels 2 --depth 4 --hidden-channels 64 --steps 3000 --seeds 0,1
    python experiments/ablation.py --preset cifar10 --dataset cifar10 --data-dir path/to/cifar-10-batches-py \\
        --out runs/ablation-cifar10 --device cuda --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

from glowtorch import GlowConfig
from glowtorch.checkpoint import checkpoint_paths, checkpoint_step, holds_run
from glowtorch.data import load_dataset
from glowtorch.plots import read_metrics
from glowtorch.presets import preset_settings
from glowtorch.train import TrainConfig, train

PERMUTATIONS = ("reverse", "shuffle", "invconv", "lu")
COUPLINGS = ("additive", "affine")
LABELS = {"reverse": "reverse", "shuffle": "shuffle", "invconv": "1x1 conv", "lu": "1x1 conv (LU)"}
COLOURS = {"reverse": "tab:green", "shuffle": "tab:blue", "invconv": "tab:red", "lu": "tab:purple"}
STYLES = {"additive": "--", "affine": "-"}
SMOKE = dict(dataset="digits", levels=2, depth=2, hidden_channels=16, steps=40, eval_every=20, batch_size=32,
             warmup_steps=10, seeds="0,1")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", help="base settings (a glowtorch preset); the flags below override them")
    p.add_argument("--dataset", help="any dataset glowtorch train reads (default: the preset's, else digits)")
    p.add_argument("--data-dir")
    p.add_argument("--image-size", type=int)
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--permutations", default=",".join(PERMUTATIONS))
    p.add_argument("--couplings", default=",".join(COUPLINGS))
    p.add_argument("--levels", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--hidden-channels", type=int)
    p.add_argument("--steps", type=int, help="optimizer steps per run (the equal budget)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=["adam", "adamax"])
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--decay-steps", type=int, help="cosine decay to 0 at this step (default: --steps)")
    p.add_argument("--eval-every", type=int, help="steps between test evaluations (default: steps / 10)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="a tiny grid on the embedded digits, in about a minute")
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            if getattr(args, key) in (None, p.get_default(key)):
                setattr(args, key, value)
    return args


def settings(args: argparse.Namespace) -> tuple[str, dict, dict]:
    """(dataset, model values, training values) shared by every run of the grid."""
    given = lambda keys: {k: v for k in keys if (v := getattr(args, k)) is not None}  # noqa: E731
    settings = preset_settings(args.preset, args.dataset, model=given(("levels", "depth", "hidden_channels")),
                               train=given(("batch_size", "optimizer", "lr", "warmup_steps")))  # fmt: skip
    dataset, training = settings.dataset, dict(settings.train)
    model = {k: v for k, v in settings.model.items() if k not in ("coupling", "permutation")}  # the grid's
    steps = args.steps or training.get("steps") or 1000
    training.update(steps=steps, epochs=None, max_minutes=None, compile=False, precision="float32",
                    decay_steps=args.decay_steps or steps, eval_every=args.eval_every or max(1, steps // 10),
                    temperatures=(0.7,), samples_per_row=8)  # fmt: skip
    return dataset, model, training


def run_grid(args: argparse.Namespace, log=print) -> list[dict]:
    """Trains (or reuses, or resumes) every run of the grid; returns one record per run."""
    dataset, model_values, train_values = settings(args)
    train_data = load_dataset(dataset, args.data_dir, train=True, image_size=args.image_size)
    test_data = load_dataset(
        dataset, args.data_dir, train=False, image_size=args.image_size or train_data.images.shape[2]
    )
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    records = []
    grid = [(c, p, s) for c in args.couplings.split(",") for p in args.permutations.split(",") for s in seeds]
    for index, (coupling, permutation, seed) in enumerate(grid, 1):
        run_dir = Path(args.out) / "runs" / f"{coupling}-{permutation}-seed{seed}"
        metrics_path = run_dir / "metrics.jsonl"
        saved = checkpoint_paths(run_dir)
        done = bool(saved) and checkpoint_step(saved[-1]) == train_values["steps"] and metrics_path.exists()
        if done:
            status = "reused"
        else:
            resume = holds_run(run_dir) and bool(checkpoint_paths(run_dir))
            if holds_run(run_dir) and not resume:  # started but never checkpointed: start again
                import shutil

                shutil.rmtree(run_dir)
            status = "resumed" if resume else "trained"
            model_config = GlowConfig(image_shape=train_data.image_shape, coupling=coupling, permutation=permutation,
                                      **model_values)  # fmt: skip
            config = TrainConfig(**{**train_values, "seed": seed})
            from glowtorch.distributed import Distributed

            train(model_config, config, train_data, test_data, run_dir, resume=resume, progress=False,
                  dist=Distributed(device=args.device), log=lambda *a: None)  # fmt: skip
        metrics = [m for m in read_metrics(metrics_path) if "test_bpd" in m]
        log(f"[{index}/{len(grid)}] {run_dir.name}: {status}, test bits/dim {metrics[-1]['test_bpd']:.4f}")
        records.append({"coupling": coupling, "permutation": permutation, "seed": seed, "status": status,
                        "metrics": metrics})  # fmt: skip
    return records


def summarize(records: list[dict]) -> list[dict]:
    """One row per (coupling, permutation): final test bits/dim over seeds, steps, wall time, images/s."""
    rows = []
    for coupling in dict.fromkeys(r["coupling"] for r in records):
        for permutation in dict.fromkeys(r["permutation"] for r in records):
            runs = [r for r in records if r["coupling"] == coupling and r["permutation"] == permutation]
            if not runs:
                continue
            finals = [r["metrics"][-1]["test_bpd"] for r in runs]
            rows.append({
                "coupling": coupling,
                "permutation": permutation,
                "seeds": len(runs),
                "test_bpd": statistics.fmean(finals),
                "spread": max(finals) - min(finals),
                "finals": finals,
                "steps": runs[0]["metrics"][-1]["step"],
                "minutes": statistics.fmean(r["metrics"][-1]["elapsed_s"] for r in runs) / 60,
                "images_per_s": statistics.fmean(
                    statistics.fmean(m["train_images_per_s"] for m in r["metrics"]) for r in runs
                ),
            })  # fmt: skip
    return rows


def write_table(rows: list[dict], path: Path, command: str) -> Path:
    lines = [
        "| coupling | permutation | test bits/dim (mean over seeds) | spread (max − min) | per seed | steps "
        "| wall time per run (min) | train images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = ", ".join(f"{v:.4f}" for v in r["finals"])
        lines.append(
            f"| {r['coupling']} | {LABELS[r['permutation']]} | {r['test_bpd']:.4f} | {r['spread']:.4f} | {per_seed} "
            f"| {r['steps']} | {r['minutes']:.1f} | {r['images_per_s']:.0f} |"
        )
    path.write_text(f"Command: `{command}`\n\n" + "\n".join(lines) + "\n")
    return path


def plot(records: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["coupling"], r["permutation"]), []).append(r)
    for axis, key, scale, label in ((axes[0], "step", 1.0, "step"), (axes[1], "elapsed_s", 60.0, "wall time (min)")):
        for (coupling, permutation), runs in groups.items():
            style = dict(color=COLOURS[permutation], linestyle=STYLES[coupling])
            for r in runs:
                axis.plot([m[key] / scale for m in r["metrics"]], [m["test_bpd"] for m in r["metrics"]],
                          alpha=0.35, linewidth=0.8, **style)  # fmt: skip
            length = min(len(r["metrics"]) for r in runs)
            xs = [statistics.fmean(r["metrics"][i][key] for r in runs) / scale for i in range(length)]
            ys = [statistics.fmean(r["metrics"][i]["test_bpd"] for r in runs) for i in range(length)]
            axis.plot(xs, ys, linewidth=2, label=f"{coupling}, {LABELS[permutation]}", **style)
        axis.set_xlabel(label)
        axis.set_ylabel("test bits/dim")
        axis.grid(alpha=0.3)
    finals = [r["metrics"][-1]["test_bpd"] for r in records]
    low, high = min(finals), max(finals)
    for axis in axes:  # the end of training, where the configurations separate
        axis.set_ylim(low - 0.1 * (high - low + 0.01), high + 1.5 * (high - low + 0.01))
    axes[0].legend(fontsize=8)
    figure.suptitle("Test bits/dim: permutation x coupling (thin: seeds, thick: mean)")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    records = run_grid(args)
    rows = summarize(records)
    command = "python experiments/ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = write_table(rows, out / "results.md", command)
    figure = plot(records, out / "ablation.png")
    counts = {s: sum(r["status"] == s for r in records) for s in ("trained", "resumed", "reused")}
    print(f"{counts['trained']} trained, {counts['resumed']} resumed, {counts['reused']} reused in "
          f"{(time.monotonic() - start) / 60:.1f} min; wrote {table} and {figure}")  # fmt: skip
    for r in rows:
        print(f"{r['coupling']:8s} {LABELS[r['permutation']]:14s} {r['test_bpd']:.4f} (spread {r['spread']:.4f})")
    if not all(math.isfinite(r["test_bpd"]) for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
