"""Plots of a run's ``metrics.jsonl``: train and test bits/dim against step and wall time."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .files import atomic_write

__all__ = ["plot_metrics", "plot_score_histogram", "read_metrics"]


def read_metrics(path: str | Path) -> list[dict]:
    """The JSON lines of ``metrics.jsonl`` (a torn last line, from a crash mid-write, and lines that are not
    objects with an integer ``step`` are ignored)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):  # a line glowtorch could have written
            rows.append(row)
    return rows


def _value(row: dict, metric: str) -> float | None:
    """A metrics line's value; train bits/dim is the mean over the steps since the previous evaluation
    where the line has it (older runs recorded only a smoothed value)."""
    if metric == "train_bpd" and row.get("train_bpd_mean") is not None:
        return _number(row["train_bpd_mean"])
    return _number(row.get(metric))


def _number(value: object) -> float | None:
    """A finite number of a metrics line, else None (a value of another type is not plotted)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def budget_clock(metrics_path: str | Path) -> str:
    """What a run's ``elapsed_s`` counts: the ``budget_clock`` of the ``train_config.json`` beside its
    metrics ("wall" or "cpu"); "wall" when that file is missing, unreadable or says nothing else."""
    try:
        config = json.loads(Path(metrics_path).with_name("train_config.json").read_text())
    except (OSError, ValueError):
        return "wall"
    return "cpu" if isinstance(config, dict) and config.get("budget_clock") == "cpu" else "wall"


def plot_metrics(metrics_path: str | Path, output: str | Path) -> Path:
    """Writes a PNG with bits/dim against step (left) and minutes (right): wall-clock minutes, or CPU
    minutes when the ``train_config.json`` beside the metrics says the run counted CPU time
    (``budget_clock="cpu"``, which is what its ``elapsed_s`` then holds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    if not rows:
        raise ValueError(f"{metrics_path} holds no metrics yet")
    minutes = "CPU time (minutes)" if budget_clock(metrics_path) == "cpu" else "wall time (minutes)"
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for axis, key, label in ((axes[0], "step", "step"), (axes[1], "elapsed_s", minutes)):
        scale = 60.0 if key == "elapsed_s" else 1.0
        for metric, style in (("train_bpd", "-"), ("test_bpd", "o-")):
            points = [(r[key] / scale, _value(r, metric)) for r in rows if _value(r, metric) is not None and key in r]
            if points:
                axis.plot(*zip(*points, strict=True), style, label=metric.replace("_", " "), markersize=3)
        axis.set_xlabel(label)
        axis.set_ylabel("bits/dim")
        axis.grid(alpha=0.3)
        axis.legend()
    output = Path(output)
    atomic_write(output, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
    return output


def plot_score_histogram(
    scores: dict, output: str | Path, bins: int = 60, xlabel: str = "bits/dim", robust: bool = False
) -> Path:
    """Overlaid histograms of per-image scores (bits/dim by default), one per dataset (``{name: (N,) tensor}``).
    With ``robust``, the axis spans each set's 1st to 99th percentile (at most 30 units wide) and values
    beyond it are counted in the first or last bin, so one set of huge scores does not flatten the rest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = {name: np.asarray(v, dtype=np.float64) for name, v in scores.items()}
    counts = {name: len(v) for name, v in values.items()}
    values = {name: v[np.isfinite(v)] for name, v in values.items()}
    finite = np.concatenate(list(values.values()))
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    if robust and finite.size:
        low = min(np.quantile(v, 0.01) for v in values.values() if v.size)
        high = min(max(np.quantile(v, 0.99) for v in values.values() if v.size), low + 30.0)
        values = {name: np.clip(v, low, high) for name, v in values.items()}
    if high - low < 1e-9:  # one value (a score of 0 everywhere): a bin around it
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    figure, axis = plt.subplots(figsize=(6.4, 3.6), constrained_layout=True)
    for name, v in values.items():
        axis.hist(v, bins=edges, alpha=0.5, density=True, label=f"{name} (n={counts[name]})")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("density")
    axis.legend()
    output = Path(output)
    atomic_write(output, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
    return output
