"""experiments/ablation.py --smoke: the whole grid on the embedded digits, its table and figure, and a
rerun that reuses finished runs and resumes an interrupted one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from glowtorch.checkpoint import checkpoint_paths

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "ablation.py"


def ablation(out: Path) -> str:
    """The smoke grid over two of the four permutations (every code path, half the runs)."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--permutations", "reverse,lu", "--out",
                             str(out)], capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_smoke_grid_writes_table_and_figure_and_resumes(tmp_path) -> None:
    out = tmp_path / "ablation"
    first = ablation(out)
    assert "8 trained, 0 resumed, 0 reused" in first
    table = (out / "results.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| additive") or line.startswith("| affine")]
    assert len(rows) == 4  # 2 permutations x 2 couplings, each over 2 seeds
    for permutation in ("| reverse |", "| 1x1 conv (LU) |"):
        assert sum(permutation in row for row in rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert 0 < float(cells[2]) < 20 and float(cells[3]) >= 0 and cells[5] == "40"
    assert Image.open(out / "ablation.png").size[0] > 800
    # an interrupted run: its last checkpoint never got written
    interrupted = out / "runs" / "affine-lu-seed1"
    checkpoint_paths(interrupted)[-1].unlink()
    second = ablation(out)
    assert "0 trained, 1 resumed, 7 reused" in second
    assert "affine-lu-seed1: resumed" in second
    assert [p.name for p in checkpoint_paths(interrupted)][-1] == "step_00000040.pt"


def test_a_preset_gives_the_settings_and_the_grid_gives_coupling_and_permutation() -> None:
    """The paper-scale recipe (``--preset cifar10``): the preset's model and optimizer, the grid's coupling
    and permutation, the flags' budget."""
    import importlib.util

    from glowtorch import GlowConfig
    from glowtorch.train import TrainConfig

    spec = importlib.util.spec_from_file_location("ablation", SCRIPT)
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    args = ablation.parse_args(["--preset", "cifar10", "--dataset", "cifar10", "--steps", "50000",
                                "--warmup-steps", "2000", "--eval-every", "2500"])  # fmt: skip
    dataset, model, training = ablation.settings(args)
    assert dataset == "cifar10" and model["depth"] == 32 and model["hidden_channels"] == 512
    config = GlowConfig(image_shape=(3, 32, 32), coupling="additive", permutation="shuffle", **model)
    assert (config.coupling, config.permutation) == ("additive", "shuffle")
    train = TrainConfig(**{**training, "seed": 1})
    assert (train.steps, train.decay_steps, train.warmup_steps, train.optimizer) == (50000, 50000, 2000, "adamax")
