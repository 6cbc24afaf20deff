"""The command line end to end on tiny data: train, evaluate, sample, resume, and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from PIL import Image

from conftest import assert_distinct_cells, grid_cells
from glowtorch.cli import main
from glowtorch.plots import budget_clock
from test_data import make_mnist

TINY = ["--levels", "2", "--depth", "1", "--hidden-channels", "8", "--batch-size", "16", "--init-images", "32",
        "--eval-every", "3", "--no-progress", "--temperatures", "0,0.7"]  # fmt: skip


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits"
    assert main(["train", "--dataset", "digits", "--steps", "6", "--out", str(out), *TINY]) == 0
    return out


def test_train_writes_everything(trained_run) -> None:
    lines = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [3, 6]
    assert all(0 < m["test_bpd"] < 20 for m in lines)
    assert sorted(p.name for p in (trained_run / "samples").iterdir()) == ["step_00000003.png", "step_00000006.png"]
    # two rows (temperatures 0 and 0.7) of ten 8x8 samples, each pixel 2x2: the T=0 row is the mode ten
    # times, the T=0.7 row ten different samples
    cells = grid_cells(trained_run / "samples" / "step_00000006.png", rows=2, columns=10, side=8, scale=2)
    assert all((cell == cells[0]).all() for cell in cells[:10])
    assert_distinct_cells(cells[10:])
    assert sorted(p.name for p in (trained_run / "model").iterdir()) == ["config.json", "model.safetensors"]
    assert len(list((trained_run / "checkpoints").glob("*.pt"))) == 2
    assert json.loads((trained_run / "train_config.json").read_text())["steps"] == 6
    assert Image.open(trained_run / "bpd.png").size[0] > 500


def test_metrics_describe_each_window_of_steps(trained_run) -> None:
    lines = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    for previous, line in zip([{"step": 0}, *lines], lines, strict=False):
        window = range(previous["step"], line["step"])
        assert line["train_worst_step"] in window
        assert line["train_bpd_worst_batch"] >= line["train_bpd_mean"] > 0
        assert line["grad_norm_max"] > 0 and 0 <= line["clipped_steps"] <= len(window)
        assert line["train_worst_image_step"] in window and 0 <= line["train_worst_image"] < 1500
        assert line["train_worst_image_bpd"] >= line["train_bpd_worst_batch"]  # one image vs a batch's mean
        assert 0 <= line["train_images_above_10"] <= len(window) * 16


def test_a_steps_worst_image_is_the_batch_image_the_model_scores_worst(tmp_path) -> None:
    import torch

    from conftest import tiny_config
    from glowtorch.data import load_dataset
    from glowtorch.preprocess import dequantize
    from glowtorch.train import TrainConfig, Trainer

    data = load_dataset("digits")
    config = TrainConfig(batch_size=16, init_images=64, steps=1, compile=False, ema_decay=0, grad_clip=0)
    trainer = Trainer(tiny_config(image_shape=(1, 8, 8)), config, data, None, tmp_path / "run", log=lambda *a: None)
    trainer.initialize()
    x, _, indices, _, _ = trainer.batch(0)
    with torch.no_grad():  # the model before the step, on the step's images
        bpd = -trainer.model.log_prob(x) / (64 * math.log(2.0)) + 8
    trainer.model.train()
    assert trainer.train_step(trainer.objective)
    summary = trainer.window.summary()
    assert summary["train_worst_image_bpd"] == pytest.approx(bpd.max().item(), rel=1e-5)
    assert summary["train_bpd_mean"] == pytest.approx(bpd.mean().item(), rel=1e-5)
    index = summary["train_worst_image"]
    assert index == int(indices[bpd.argmax()])
    own = dequantize(data.images[index : index + 1], 8, noise=False)  # the image itself, at its bins' centres
    assert (x[bpd.argmax()] - own[0]).abs().max() <= 0.5 / 256 + 1e-6  # the same pixels, up to the noise
    assert summary["train_images_above_10"] == int((bpd > 10).sum())


def test_evaluate_matches_training_metric(trained_run, capsys) -> None:
    code, out, _ = run(capsys, "evaluate", trained_run, "--dataset", "digits", "--no-progress")
    assert code == 0
    reported = float(out.split(":")[1].split()[0])
    assert "per image: median" in out and "worst" in out
    last = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert reported == pytest.approx(last["test_bpd"], abs=1e-4)
    code, out2, _ = run(
        capsys, "evaluate", trained_run / "model", "--dataset", "digits", "--draws", "2", "--no-progress"
    )
    assert code == 0 and "2 draw(s)" in out2


def test_sample_writes_png(trained_run, tmp_path, capsys) -> None:
    out = tmp_path / "grid.png"
    code, _, _ = run(capsys, "sample", trained_run, "--n", "6", "--columns", "3", "--temperature", "0.5", "-o", out)
    assert code == 0
    assert_distinct_cells(grid_cells(out, rows=2, columns=3, side=8))


def test_resume_warns_when_new_options_raise_the_learning_rate(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    schedule = ["--warmup-steps", "0", "--decay-steps", "6"]
    assert main(["train", "--dataset", "digits", "--steps", "6", "--out", str(out), *schedule, *TINY]) == 0
    capsys.readouterr()
    code, text, _ = run(capsys, "train", "--dataset", "digits", "--steps", "9", "--out", out, "--resume", *TINY,
                        "--warmup-steps", "0", "--decay-steps", "9")  # fmt: skip
    assert code == 0 and "warning: these options raise the learning rate at step 6 from 0 to 0.00025" in text
    code, text, _ = run(capsys, "train", "--dataset", "digits", "--steps", "12", "--out", out, "--resume", *TINY,
                        "--warmup-steps", "0", "--decay-steps", "9")  # fmt: skip
    assert code == 0 and "warning" not in text  # the same schedule as the checkpoint's


class TickingClock:
    """A clock that moves ``tick`` seconds each time it is read: training's time budget then holds the same
    number of steps on every machine, however fast or busy."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_decay_paced_to_the_time_budget_is_a_fixed_schedule(tmp_path, capsys, monkeypatch) -> None:
    """``--decay-steps auto`` fixes the step where the cosine ends at the end of warmup, from the measured
    speed and the time left; that number, given back as ``--decay-steps N`` with the steps the run made,
    trains the same weights, and a resume keeps it. The clock is the test's own (machine speed plays no part)."""
    import glowtorch.train.schedule

    monkeypatch.setattr(glowtorch.train.schedule, "clock", TickingClock(0.05))
    paced, fixed = tmp_path / "paced", tmp_path / "fixed"
    common = ["--dataset", "digits", "--warmup-steps", "20", *TINY, "--eval-every", "50"]

    def last_step(run_dir) -> int:
        return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"]

    code, text, _ = run(capsys, "train", "--max-minutes", "0.1", "--out", paced, "--decay-steps", "auto", *common)
    assert code == 0 and "paced to --max-minutes" in text
    decay_steps = json.loads((paced / "train_config.json").read_text())["resolved"]["decay_steps"]
    assert isinstance(decay_steps, int) and decay_steps > 20
    assert f"--decay-steps {decay_steps} repeats this schedule" in text
    from glowtorch.train import RunDir, TrainConfig

    written = json.loads((paced / "train_config.json").read_text())
    options, resolved = RunDir(paced).read_config()
    assert TrainConfig.from_dict(written) == options  # the config reads its own file back
    assert options.decay_steps == "auto" and resolved["decay_steps"] == decay_steps and "precision" in resolved
    steps = str(last_step(paced))
    assert main(["train", "--steps", steps, "--out", str(fixed), "--decay-steps", str(decay_steps), *common]) == 0
    model = "model/model.safetensors"
    assert (paced / model).read_bytes() == (fixed / model).read_bytes()
    code, text, _ = run(capsys, "train", "--max-minutes", "0.15", "--out", paced, "--decay-steps", "auto",
                        "--resume", *common)  # fmt: skip
    assert code == 0 and f"keeping the run's paced schedule: learning rate 0 at step {decay_steps:,}" in text
    assert "warning" not in text and "paced to --max-minutes" not in text
    steps = str(last_step(paced))
    assert main(["train", "--steps", steps, "--out", str(fixed), "--decay-steps", str(decay_steps), "--resume",
                 *common]) == 0  # fmt: skip
    assert (paced / model).read_bytes() == (fixed / model).read_bytes()


def test_a_cpu_budget_counts_cpu_time_not_wall_time(tmp_path, capsys, monkeypatch) -> None:
    """``--budget-clock cpu``: ``--max-minutes`` and the paced decay count this process's CPU time. With the
    wall clock stopped the run still ends, when the CPU clock has used up the budget (and the other way round
    for the wall clock), and the metrics' elapsed_s is CPU time."""
    import glowtorch.train.schedule

    monkeypatch.setattr(glowtorch.train.schedule, "clock", lambda: 5.0)  # wall time stands still
    monkeypatch.setattr(glowtorch.train.schedule, "cpu_clock", TickingClock(0.05))
    out = tmp_path / "cpu"
    # --steps 400 only caps a broken clock (the budget ends the run after a few dozen steps)
    code, _, _ = run(capsys, "train", "--dataset", "digits", "--max-minutes", "0.05", "--budget-clock", "cpu",
                     "--warmup-steps", "20", "--decay-steps", "auto", "--steps", "400", "--out", out,
                     *TINY)  # fmt: skip
    assert code == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 2.9 <= lines[-1]["elapsed_s"] < 3.5  # 0.05 minutes = 3 s of CPU time, read in 0.05 s ticks
    written = json.loads((out / "train_config.json").read_text())
    assert written["budget_clock"] == "cpu" and written["resolved"]["decay_steps"] > 20
    # the same run on the wall clock: the CPU clock stands still, the wall clock ticks
    monkeypatch.setattr(glowtorch.train.schedule, "clock", TickingClock(0.05))
    monkeypatch.setattr(glowtorch.train.schedule, "cpu_clock", lambda: 5.0)
    code, _, _ = run(capsys, "train", "--dataset", "digits", "--max-minutes", "0.05", "--steps", "400", "--out",
                     tmp_path / "wall", *TINY)  # fmt: skip
    assert code == 0
    assert 2.9 <= json.loads((tmp_path / "wall" / "metrics.jsonl").read_text().splitlines()[-1])["elapsed_s"] < 3.5
    # the curve's time axis says which clock its elapsed_s counted
    assert budget_clock(out / "metrics.jsonl") == "cpu" and budget_clock(tmp_path / "wall" / "metrics.jsonl") == "wall"
    for text in ("{not json", '["cpu"]', '{"budget_clock": "gpu"}'):  # unreadable or odd: the wall clock, no crash
        (tmp_path / "odd").mkdir(exist_ok=True)
        (tmp_path / "odd" / "train_config.json").write_text(text)
        assert budget_clock(tmp_path / "odd" / "metrics.jsonl") == "wall"
    with pytest.raises(SystemExit) as exit_code:
        main(["train", "--dataset", "digits", "--budget-clock", "gpu", "--out", str(tmp_path / "x")])
    assert exit_code.value.code == 2 and "invalid choice: 'gpu'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_paced_decay_ends_at_the_run_steps_when_they_come_first(tmp_path, capsys) -> None:
    """``--decay-steps auto`` with ``--steps``: 30 minutes hold far more than 30 steps, so the learning rate
    reaches 0 at step 30, where the run stops."""
    out = tmp_path / "run"
    flags = ["--dataset", "digits", "--warmup-steps", "20", "--max-minutes", "30", *TINY, "--eval-every", "30"]
    code, text, _ = run(capsys, "train", "--steps", "30", "--out", out, "--decay-steps", "auto", *flags)
    assert code == 0 and "cosine decay to 0 at step 30, at the run's last step" in text
    assert json.loads((out / "train_config.json").read_text())["resolved"]["decay_steps"] == 30


def test_decay_steps_must_be_a_number_or_auto(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        run(capsys, "train", "--dataset", "digits", "--steps", "3", "--out", tmp_path / "r", "--decay-steps", "soon")
    assert info.value.code == 2 and "'soon' is neither a number of steps nor auto" in capsys.readouterr().err
    code, _, err = run(capsys, "train", "--dataset", "digits", "--steps", "3", "--out", tmp_path / "r",
                       "--decay-steps", "auto", *TINY)  # fmt: skip
    assert code != 0 and "set max_minutes" in err and not (tmp_path / "r").exists()


def test_resume_continues_exactly(trained_run, tmp_path, capsys) -> None:
    partial = tmp_path / "partial"
    straight = tmp_path / "straight"
    assert main(["train", "--dataset", "digits", "--steps", "9", "--out", str(straight), *TINY]) == 0
    assert main(["train", "--dataset", "digits", "--steps", "6", "--out", str(partial), *TINY]) == 0
    assert main(["train", "--dataset", "digits", "--steps", "9", "--out", str(partial), "--resume", *TINY]) == 0
    a = (straight / "model" / "model.safetensors").read_bytes()
    b = (partial / "model" / "model.safetensors").read_bytes()
    assert a == b
    steps = [json.loads(line)["step"] for line in (partial / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 9]


def test_conditional_training_on_synthetic_mnist(tmp_path, capsys) -> None:
    make_mnist(tmp_path / "mnist", n=40)
    out = tmp_path / "cond"
    code, _, _ = run(capsys, "train", "--dataset", "mnist", "--data-dir", tmp_path / "mnist", "--conditional",
                     "--steps", "3", "--out", out, *TINY)  # fmt: skip
    assert code == 0
    assert json.loads((out / "model" / "config.json").read_text())["num_classes"] == 10
    code, text, _ = run(
        capsys, "evaluate", out, "--dataset", "mnist", "--data-dir", tmp_path / "mnist", "--no-progress"
    )
    assert code == 0 and "accuracy" in text
    code, _, _ = run(capsys, "sample", out, "--n", "4", "--label", "3", "-o", tmp_path / "s.png")
    assert code == 0
    code, _, err = run(capsys, "sample", out, "--n", "4", "--label", "10", "-o", tmp_path / "s.png")
    assert code == 1 and "--label: pick a class from 0 to 9" in err
    # a per-class, per-position prior fitted to the training images, from the command line
    fitted = tmp_path / "fitted"
    data = ["--dataset", "mnist", "--data-dir", tmp_path / "mnist", "--no-progress"]
    code, text, err = run(capsys, "fit-class-prior", out, *data, "--out", fitted)
    assert code == 0, err
    assert "fitted a spatial class prior to 40 training images" in text
    assert json.loads((fitted / "config.json").read_text())["class_prior"] == "spatial"
    code, text, _ = run(capsys, "evaluate", fitted, *data)
    assert code == 0 and "latent classifier accuracy" in text and "highest p(x | y)" in text
    code, _, err = run(capsys, "fit-class-prior", out, *data, "--out", fitted)
    assert code == 1 and one_line_error(err) and "already holds a model" in err


def one_line_error(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("glowtorch: error:") and "Traceback" not in err


def test_bad_input_gives_one_line_errors(trained_run, tmp_path, capsys) -> None:
    cases = [
        (["fit-class-prior", trained_run, "--dataset", "digits", "--out", tmp_path / "f"], "class-conditional"),
        (["train", "--preset", "nope"], "unknown preset"),
        (["train", "--dataset", "mnist", "--data-dir", tmp_path / "missing"], "does not exist"),
        (["evaluate", tmp_path / "nothing", "--dataset", "digits"], "not a checkpoint"),
        (["sample", trained_run, "--label", "1", "-o", tmp_path / "x.png"], "class-conditional"),
        (["train", "--dataset", "digits", "--out", trained_run, "--steps", "1"], "already holds a training run"),
        (["train", "--dataset", "digits", "--levels", "4", "--steps", "1", "--out", tmp_path / "r"], "divisible"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == 1, argv
        assert one_line_error(err) and message in err, err
    make_mnist(tmp_path / "mnist", n=4)
    code, _, err = run(capsys, "evaluate", trained_run, "--dataset", "mnist", "--data-dir", tmp_path / "mnist")
    assert code == 1 and "expects (1, 8, 8)" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "sample", trained_run, "-o", blocker / "grid.png")
    assert code == 1 and "cannot write" in err


def test_invalid_flag_values_exit_2(capsys) -> None:
    cases = (
        ["train", "--lr", "abc"],
        ["train", "--batch-size", "1.5"],
        ["train", "--coupling", "volume"],
        ["sample", "x", "--temperature", "-0.5"],
    )
    for argv in cases:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error" in err


def test_option_values_are_checked_once_by_the_configs(tmp_path, capsys) -> None:
    """argparse only converts types; TrainConfig and GlowConfig refuse bad values, before anything is written."""
    cases = (
        (["--lr", "0"], "lr must be a positive number"),
        (["--lr", "nan"], "lr must be a positive number"),
        (["--batch-size", "0"], "batch_size must be >= 1"),
        (["--shift", "-1"], "shift must be >= 0"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--memory", "offload"], "invalid choice"),
        (["--levels", "0"], "levels must be >= 1"),
        (["--n-bits", "9"], "n_bits must be between 1 and 8"),
    )
    for flags, message in cases:
        out = tmp_path / "run"
        try:
            code = main(["train", "--out", str(out), "--no-progress", *flags])
        except SystemExit as exit_:
            code = exit_.code
        err = capsys.readouterr().err
        assert code in (1, 2) and err.count("\n") == 1 and message in err, (flags, err)
        assert not out.exists(), flags


def test_train_flags_come_from_the_config_fields() -> None:
    import dataclasses

    from glowtorch import GlowConfig
    from glowtorch.cli import build_parser
    from glowtorch.cli.common import MODEL_FLAGS
    from glowtorch.train import TrainConfig

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {option: action for action in train._actions for option in action.option_strings}
    fields = [f for f in dataclasses.fields(TrainConfig)]
    fields += [f for f in dataclasses.fields(GlowConfig) if f.name not in MODEL_FLAGS]
    for f in fields:
        action = flags["--" + f.name.replace("_", "-")]
        assert action.help, f"--{f.name} has no help"
        if "choices" in f.metadata:
            assert list(action.choices) == list(f.metadata["choices"])
    assert "global batch" in flags["--batch-size"].help
    assert "--no-learn-top" in flags and "--no-channels-last" in flags and "--no-compile" in flags


def test_corrupt_checkpoint_refused_and_run_untouched(trained_run, tmp_path, capsys) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run / "model", copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = run(capsys, "sample", copy, "-o", tmp_path / "g.png")
    assert code == 1 and "corrupt" in err and one_line_error(err)
    assert not (tmp_path / "g.png").exists()


def test_python_m_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "glowtorch", "presets"], capture_output=True, text=True, check=True)
    assert "mnist-cpu" in result.stdout and "cifar10" in result.stdout


def test_resume_with_another_config_is_refused(trained_run, tmp_path, capsys) -> None:
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained_run, run_dir)
    before = (run_dir / "model" / "model.safetensors").read_bytes()
    argv = ["train", "--dataset", "digits", "--steps", "9", "--out", run_dir, "--resume", *TINY]
    argv[argv.index("--depth") + 1] = "2"
    code, _, err = run(capsys, *argv)
    assert code == 1 and "another model config" in err and one_line_error(err)
    assert (run_dir / "model" / "model.safetensors").read_bytes() == before
    code, _, err = run(capsys, "train", "--dataset", "digits", "--steps", "1", "--out", tmp_path / "new", "--resume")
    assert code == 1 and "nothing to resume" in err


def test_unwritable_output_directory(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "train", "--dataset", "digits", "--steps", "1", "--out", blocker / "run")
    assert code == 1 and "cannot write" in err and one_line_error(err)


def test_compile_without_a_compiler_is_a_one_line_error(tmp_path, capsys, monkeypatch) -> None:
    import glowtorch.train.loop

    monkeypatch.setattr(glowtorch.train.loop.shutil, "which", lambda name: None)
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--dataset", "digits", "--steps", "1", "--compile", "--out", out, *TINY)
    assert code == 1 and one_line_error(err) and "C++ compiler" in err
    assert not (out / "checkpoints").exists()


def test_keep_freed_memory_applies_on_linux_glibc() -> None:
    import platform

    from glowtorch import keep_freed_memory

    applied = keep_freed_memory()
    assert applied == (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    assert keep_freed_memory() == applied, "calling it again is harmless"
