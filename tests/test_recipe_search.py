"""experiments/recipe_search.py --smoke: two arms trained for an equal CPU budget in parallel child
processes, evaluated, tabled and plotted; a rerun reuses them; another budget in the same folder is refused."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "recipe_search.py"
sys.path.insert(0, str(SCRIPT.parent))
import recipe_search  # noqa: E402


def search(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--parallel", "2", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_smoke_search_trains_equal_budgets_and_tables_them(tmp_path) -> None:
    out = tmp_path / "recipes"
    first = search(out)
    assert first.returncode == 0, first.stderr[-2000:] + first.stdout[-2000:]
    assert "0 of 2 runs done already; 2 to train" in first.stdout
    records = {}
    for arm in ("base", "variational"):
        run_dir = out / "runs" / f"{arm}-seed0"
        record = json.loads((run_dir / "recipe.json").read_text())
        records[arm] = record
        config = json.loads((run_dir / "train_config.json").read_text())
        assert config["budget_clock"] == "cpu" and config["max_minutes"] == 0.15 and config["seed"] == 0
        assert config["resolved"]["precision"] == record["precision"]
        # the budget is CPU time, used up (the last metrics line is written just before the check that ends it,
        # so up to a step and an evaluation short of it: 0.142 of 0.15 minutes with both cores busy)
        assert 0.15 * 0.9 <= record["cpu_minutes"] < 0.15 + 0.1
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["step"] == record["steps"] > 0
        # Jensen: the importance-weighted bound is never above the mean of the one-sample bounds
        assert math.isfinite(record["test_bpd"]) and record["test_bpd_importance_weighted"] <= record["test_bpd"]
        assert record["test_images"] == 64 and record["importance_samples"] == 2
    assert records["variational"]["parameters"] > records["base"]["parameters"]  # q's parameters
    model = json.loads((out / "runs" / "variational-seed0" / "model" / "config.json").read_text())
    assert model["dequantization"] == "variational" and model["hidden_channels"] == 16  # smoke size + the arm
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| base") or line.startswith("| variational")]
    assert len(rows) == 2
    values = [float(row.split("|")[3]) for row in rows]
    assert values == sorted(values)  # best first
    for row in rows:
        arm = row.split("|")[1].strip()
        assert f"{records[arm]['test_bpd']:.4f}" in row and f"{records[arm]['test_bpd_importance_weighted']:.4f}" in row
        assert row.split("|")[6].strip() == f"{records[arm]['steps']:,}"  # steps per seed (one seed here)
    assert Image.open(out / "recipes.png").size[0] >= 600
    again = search(out, "--arms", "base")  # a finished run is reused: nothing trains
    assert again.returncode == 0 and "1 of 1 runs done already; 0 to train" in again.stdout
    assert "started" not in again.stdout
    assert (out / "results.md").read_text().count("| variational |") == 1  # every finished run of OUT is tabled
    other = search(out, "--minutes", "0.3")
    assert other.returncode != 0 and "give another --out for another budget" in other.stderr


def test_every_arm_builds_a_valid_config_from_the_preset() -> None:
    """Each arm is the starting point (mnist-cpu, affine coupling, uniform dequantization) with its own change
    and the CPU budget, and makes a valid model and training config (a typo in an arm's values fails here,
    not an hour into a search)."""
    from glowtorch import GlowConfig
    from glowtorch.presets import load_preset
    from glowtorch.train import TrainConfig

    args = recipe_search.parse_args(["--minutes", "30"])
    preset = load_preset("mnist-cpu")
    for arm, (_, model_change, train_change) in recipe_search.ARMS.items():
        dataset, model, training = recipe_search.run_settings(args, arm, seed=3)
        assert dataset == "mnist"
        assert model == {**preset["model"], **recipe_search.START_MODEL, **model_change}
        assert model["coupling"] == model_change.get("coupling", "affine")  # the recipe the search measured
        assert model["dequantization"] == model_change.get("dequantization", "uniform")
        config = TrainConfig(**training)
        assert config.max_minutes == 30 and config.budget_clock == "cpu" and config.seed == 3
        assert config.decay_steps == train_change.get("decay_steps", "auto")
        for key, value in train_change.items():
            assert getattr(config, key) == value
        GlowConfig(image_shape=(1, 28, 28), **model)
    changed = [arm for arm, (_, m, t) in recipe_search.ARMS.items() if m or t]
    assert len(changed) == len(recipe_search.ARMS) - 1  # every arm but base changes something


def test_unknown_arms_and_bad_budgets_are_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        recipe_search.parse_args(["--arms", "base,wider"])
    assert "unknown arm 'wider'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe_search.parse_args(["--minutes", "0"])


def test_the_table_gives_each_arms_mean_and_every_seeds_bits_per_dim_and_steps(tmp_path) -> None:
    def record(arm: str, seed: int, bpd: float, steps: int) -> dict:
        return {"arm": arm, "seed": seed, "test_bpd": bpd, "test_bpd_importance_weighted": bpd - 0.01,
                "steps": steps, "cpu_minutes": 20.0, "parameters": 438_848, "precision": "bfloat16",
                "importance_samples": 4, "test_images": 10_000}  # fmt: skip

    records = [record("base", 0, 1.60, 7307), record("base", 1, 1.64, 5694), record("spline", 0, 1.50, 2794)]
    rows = recipe_search.summarize(records)
    assert [r["arm"] for r in rows] == ["spline", "base"]  # best first
    table = recipe_search.write_table(rows, records, tmp_path / "results.md", "cmd").read_text()
    base = next(line for line in table.splitlines() if line.startswith("| base"))
    cells = [cell.strip() for cell in base.split("|")[1:-1]]
    assert cells[2:7] == ["1.6200", "1.6000, 1.6400", "1.6100", "7,307, 5,694", "20.0"]
