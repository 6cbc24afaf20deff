"""Hand-computed values for the helpers every command leans on: file writing (``files``), the learning-rate
schedule (``train.schedule``), the precision choice and its probe (``precision``), the training diagnostics,
the fitted class prior, image modes (``data.image_files``) and reference files (``reference``). Each case is
small enough to work out on paper, including the boundaries (exactly at a threshold, one past it)."""

from __future__ import annotations

import errno
import math
import os
import re
from pathlib import Path

import pytest

from glowtorch import files
from glowtorch.files import (
    append_line,
    atomic_write,
    current_umask,
    disk_full,
    ensure_writable_dir,
    exclusive_temp,
    first_line,
    remove_stale_temps,
)
from glowtorch.precision import probe_rates as real_probe_rates  # conftest stands a fixed probe in for it


# --------------------------------------------------------------------------- files
def test_first_line_of_an_error() -> None:
    assert first_line(ValueError("one\ntwo")) == "one"
    assert first_line(ValueError("  \n  padded\nmore")) == "padded"
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(OSError(errno.ENOSPC, "cannot write x: the disk is full")) == "cannot write x: the disk is full"
    with_file = OSError(errno.ENOENT, "No such file or directory", "a.txt")  # Python's own: its text as it is
    assert first_line(with_file) == "[Errno 2] No such file or directory: 'a.txt'"
    assert first_line(OSError("plain")) == "plain"


def test_an_exclusive_temporary_is_new_private_and_named_as_glowtorchs(tmp_path) -> None:
    a, b = exclusive_temp(tmp_path / "grid.png"), exclusive_temp(tmp_path / "grid.png")
    assert a != b and a.parent == tmp_path and a.read_bytes() == b""
    assert re.fullmatch(r"\.grid\.png\.glowtorch-tmp-[a-z0-9_]{8}", a.name)
    assert a.stat().st_mode & 0o777 == 0o600


def test_only_glowtorchs_own_temporaries_are_removed(tmp_path) -> None:
    ours = [tmp_path / ".a.png.glowtorch-tmp-abcd_123", tmp_path / ".b.glowtorch-tmp-zzzzzzzz"]
    theirs = [
        tmp_path / ".a.png.glowtorch-tmp-abcd123",  # 7 characters
        tmp_path / ".a.png.glowtorch-tmp-abcd12345",  # 9
        tmp_path / ".a.png.glowtorch-tmp-ABCD1234",  # capitals
        tmp_path / "a.png.glowtorch-tmp-abcd1234",  # not hidden
        tmp_path / "..glowtorch-tmp-abcd1234",  # no name
        tmp_path / ".thesis.tmpl",
    ]
    for path in ours + theirs:
        path.write_text("x")
    (tmp_path / ".c.glowtorch-tmp-folder12").mkdir()
    (tmp_path / ".d.glowtorch-tmp-link1234").symlink_to(theirs[0])
    assert sorted(remove_stale_temps(tmp_path)) == sorted(ours)
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)
    assert (tmp_path / ".c.glowtorch-tmp-folder12").is_dir() and (tmp_path / ".d.glowtorch-tmp-link1234").is_symlink()
    assert remove_stale_temps(tmp_path) == []


def test_an_atomic_write_gets_the_umask_mode_and_a_failed_one_changes_nothing(tmp_path) -> None:
    target = tmp_path / "out.txt"
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027 and current_umask() == 0o027  # reading it leaves it as it was
        atomic_write(target, lambda p: Path(p).write_text("first"))
    finally:
        os.umask(old)
    assert target.read_text() == "first" and target.stat().st_mode & 0o777 == 0o640

    def broken(p: Path) -> None:
        Path(p).write_text("half")
        raise RuntimeError("the writer failed")

    with pytest.raises(RuntimeError, match="the writer failed"):
        atomic_write(target, broken)
    assert target.read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]

    def full(p: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=f"cannot write {re.escape(str(target))}: the disk is full"):
        atomic_write(target, full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_link_at_the_destination_is_replaced_not_written_through(tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("keep")
    (tmp_path / "out.txt").symlink_to(secret)
    atomic_write(tmp_path / "out.txt", lambda p: Path(p).write_text("new"))
    assert secret.read_text() == "keep" and not (tmp_path / "out.txt").is_symlink()
    assert (tmp_path / "out.txt").read_text() == "new"


def test_what_counts_as_a_full_disk(tmp_path, monkeypatch) -> None:
    assert disk_full(OSError(errno.ENOSPC, "x")) and disk_full(OSError(errno.EDQUOT, "x"))
    assert not disk_full(OSError(errno.EACCES, "x")) and not disk_full(RuntimeError("unexpected pos"))
    try:
        raise RuntimeError("wrapped") from OSError(errno.ENOSPC, "x")
    except RuntimeError as error:
        assert disk_full(error)
    try:
        try:
            raise OSError(errno.EDQUOT, "x")
        except OSError:
            raise ValueError("while handling") from None
    except ValueError as error:  # "from None" hides the context from a reader, not from disk_full
        assert disk_full(error)
    assert disk_full(RuntimeError("write failed: No space left on device"))
    assert disk_full(ValueError("StorageFull: 0 bytes"))

    class Stats:
        f_frsize = 4096

        def __init__(self, blocks: int) -> None:
            self.f_bavail = blocks

    limit_blocks = files.NEARLY_FULL_BYTES // 4096  # exactly at the limit: not full; one block less: full
    monkeypatch.setattr(files.os, "statvfs", lambda folder: Stats(limit_blocks))
    assert not disk_full(RuntimeError("unexpected pos"), tmp_path)
    monkeypatch.setattr(files.os, "statvfs", lambda folder: Stats(limit_blocks - 1))
    assert disk_full(RuntimeError("unexpected pos"), tmp_path)
    assert not disk_full(RuntimeError("unexpected pos"))  # no folder: only the error itself counts

    def unreadable(folder):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(files.os, "statvfs", unreadable)
    assert not disk_full(RuntimeError("unexpected pos"), tmp_path)  # the free space unknown: not said to be full


def test_appending_a_line_never_leaves_half_of_one(tmp_path, monkeypatch) -> None:
    path = tmp_path / "metrics.jsonl"
    append_line(path, '{"step": 1}')
    append_line(path, '{"step": 2}')
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(OSError, match="the disk is full"):
        append_line(path, '{"step": 3}')
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    with pytest.raises(OSError, match="the disk is full"):
        append_line(tmp_path / "new.jsonl", "{}")  # a first line that fails leaves an empty file
    assert (tmp_path / "new.jsonl").read_bytes() == b""


def test_a_folder_that_cannot_hold_files_is_one_line(tmp_path) -> None:
    assert ensure_writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe leaves nothing behind
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot write to .*file/sub .*choose another output directory"):
        ensure_writable_dir(tmp_path / "file" / "sub")


# --------------------------------------------------------------------------- the learning-rate schedule
def test_the_learning_rate_by_hand() -> None:
    from glowtorch.train import TrainConfig
    from glowtorch.train.schedule import learning_rate

    warm = TrainConfig(lr=1e-3, warmup_steps=4, steps=1000)
    assert [learning_rate(warm, s) for s in (0, 1, 3, 4, 100)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    assert learning_rate(TrainConfig(lr=1e-3, warmup_steps=0, steps=1000), 0) == 1e-3
    assert learning_rate(warm, 3, scale=0.5) == pytest.approx(5e-4)
    # cosine from the end of warmup (step 4) to 0 at step 12: halfway (step 8) is half the rate
    decay = TrainConfig(lr=1e-3, warmup_steps=4, decay_steps=12, steps=1000)
    values = [learning_rate(decay, s) for s in (3, 4, 6, 8, 10, 12, 20)]
    cosine = [0.5 * (1 + math.cos(math.pi * p)) for p in (0, 0, 0.25, 0.5, 0.75, 1, 1)]
    assert values == pytest.approx([1e-3 * c for c in cosine], abs=1e-15)
    short = TrainConfig(lr=1e-3, warmup_steps=4, decay_steps=5, steps=1000)  # one step of decay: 1, then 0
    assert [learning_rate(short, s) for s in (4, 5)] == pytest.approx([1e-3, 0.0], abs=1e-18)


def test_the_resume_warning_threshold() -> None:
    from glowtorch.train import TrainConfig
    from glowtorch.train.schedule import learning_rate_warning

    saved = TrainConfig(lr=1e-3, warmup_steps=0, decay_steps=100, steps=1000)  # at step 50: 5e-4
    assert learning_rate_warning(saved, saved, 50) is None
    double = TrainConfig(lr=2e-3, warmup_steps=0, decay_steps=100, steps=1000)  # 1e-3: exactly twice, within the margin
    assert learning_rate_warning(saved, double, 50) is None
    higher = TrainConfig(lr=2.2e-3, warmup_steps=0, decay_steps=100, steps=1000)  # 1.1e-3 > 2 x 5e-4 + 1e-3 x 2.2e-3
    message = learning_rate_warning(saved, higher, 50)
    assert message is not None and "from 0.0005 to 0.0011" in message and "at step 50" in message
    # the margin: warned when after > 2 x before + 0.001 x lr, i.e. 0.5 L > 0.001 + 0.001 L: L > 0.002004
    at = [TrainConfig(lr=lr, warmup_steps=0, decay_steps=100, steps=1000) for lr in (2.003e-3, 2.006e-3)]
    assert learning_rate_warning(saved, at[0], 50) is None and learning_rate_warning(saved, at[1], 50) is not None
    # exactly at the threshold (2 x 1.0 + 0.001 x 2.002002... is 2.002002... in float64): not warned
    one, edge = (TrainConfig(lr=lr, warmup_steps=0, steps=1000) for lr in (1.0, 2.002002002002002))
    assert 2 * 1.0 + 1e-3 * edge.lr == edge.lr and learning_rate_warning(one, edge, 5) is None
    longer = TrainConfig(lr=1e-3, warmup_steps=0, decay_steps=1000, steps=1000)  # the same lr, a later decay: 9.8e-4
    assert learning_rate_warning(saved, longer, 90) is not None  # saved: 2.4e-5 at step 90


def test_the_paced_decay_by_hand() -> None:
    from glowtorch.train.schedule import paced_decay_steps

    # 10 steps/s for 100 s: 1000 steps; evaluating 300 images every 100 steps of batch 10 costs 300 / 3000 = 0.1
    assert paced_decay_steps(40, 10.0, 100.0, 100, 300, 10) == 40 + int(1000 / 1.1)
    assert paced_decay_steps(40, 10.0, 100.0, 0, 300, 10) == 1040  # no evaluations
    assert paced_decay_steps(40, 10.0, 0.0, 100, 300, 10) == 41  # no time left: one step on


def test_the_decay_pacer_times_steps_from_a_fifth_of_warmup(monkeypatch) -> None:
    from glowtorch.train import TrainConfig, schedule

    now = [100.0]
    monkeypatch.setattr(schedule, "clock", lambda: now[0])
    config = TrainConfig(warmup_steps=20, decay_steps="auto", max_minutes=1.0, batch_size=10)
    pacer = schedule.DecayPacer(config)
    assert pacer.after_step(3, 0.0, 0, 0) is None and pacer.started is None  # before 20 // 5 = 4
    assert pacer.after_step(4, 0.0, 0, 0) is None and pacer.started == (4, 100.0)
    now[0] = 110.0
    assert pacer.after_step(19, 10.0, 0, 0) is None  # still warming up
    now[0] = 116.0  # 16 steps (4 -> 20) in 16 s: 1 step/s; 60 - 12 = 48 s left
    assert pacer.after_step(20, 12.0, 0, 0) == (68, 1.0, 48.0)
    now[0] = 120.0  # 20 steps in 20 s, past the budget: no time left, one step on
    assert pacer.after_step(24, 70.0, 0, 0) == (25, 1.0, 0.0)
    late = schedule.DecayPacer(config)
    assert late.after_step(5, 0.0, 0, 0) is None and late.started == (5, 120.0)  # a resume past 4: from there
    odd = schedule.DecayPacer(TrainConfig(warmup_steps=22, decay_steps="auto", max_minutes=1.0))
    assert odd.after_step(4, 0.0, 0, 0) is None and odd.started == (4, 120.0)  # 22 // 5 = 4


# --------------------------------------------------------------------------- the precision choice
def test_the_precision_choice_by_hand() -> None:
    from glowtorch.precision import PrecisionChoice, choose, paired_speedups

    assert choose(100.0, 120.0) == "bfloat16"  # exactly x1.2
    assert choose(100.0, 119.9) == "float32"
    assert choose(100.0, 200.0, speedup_low=1.19) == "float32"  # the lower quartile decides too
    assert choose(100.0, 200.0, speedup_low=1.2) == "bfloat16"
    assert choose(100.0, 110.0, speedup_low=5.0) == "float32"  # and the median ratio
    assert choose(100.0, 150.0, speedup_needed=1.6) == "float32"
    # ratios 1, 2, 3, 4, 5: the inclusive lower quartile is 2
    assert paired_speedups([1.0, 2.0, 3.0, 4.0, 5.0], [1.0] * 5) == 2.0
    assert paired_speedups([2.0, 4.0, 6.0, 8.0, 10.0, 1.0], [2.0] * 5 + [0.0]) == 2.0  # a zero time is dropped
    assert paired_speedups([1.0] * 4, [1.0] * 4) == 0.0  # fewer than 5 pairs decide nothing
    choice = PrecisionChoice("bfloat16", "auto", 500.0, 1000.0, 1.9)
    assert choice.summary() == ("precision bfloat16 (auto: coupling-network convolutions at 1000 GFLOP/s in "
                                "bfloat16, 500 in float32, x2.00, x1.90 in 3 of 4 paired runs)")  # fmt: skip
    assert PrecisionChoice("float32", "asked").summary() == "precision float32 (asked)"
    assert PrecisionChoice("float32", "half", 100.0, None).summary() == "precision float32 (half)"  # one rate
    with pytest.raises(ValueError):
        paired_speedups([1.0] * 5, [1.0] * 4)  # unpaired times are a bug, not a measurement
    assert choice.record() == {"precision": "bfloat16", "precision_how": "auto", "probe_float32_gflops": 500.0,
                               "probe_bfloat16_gflops": 1000.0, "probe_speedup_low": 1.9}  # fmt: skip


# --------------------------------------------------------------------------- training diagnostics
def test_the_progress_line_by_hand() -> None:
    from glowtorch.train.diagnostics import progress_line

    metrics = {"step": 100, "epoch": 0.5, "train_bpd_mean": 2.0504, "test_bpd": 1.9012, "test_bpd_median": 1.931,
               "train_images_per_s": 354.4, "elapsed_s": 171.0}  # fmt: skip
    assert progress_line(metrics, max_steps=400) == (
        "step 100 | epoch 0.5 | train 2.050 | test 1.901 bits/dim (median 1.931) | 354 img/s | 2:51 elapsed, ~8:33 left"
    )  # 171 s per 100 steps, 300 steps left: 513 s
    assert progress_line(metrics, max_steps=400, max_minutes=5.0).endswith("2:51 elapsed, ~2:09 left")  # the sooner
    assert progress_line(metrics, max_minutes=2.0).endswith("2:51 elapsed, ~0:00 left")  # past the budget
    hours = {**metrics, "elapsed_s": 3725.0, "train_bpd": 3.0, "baseline_bpd": 1.5, "test_accuracy": 0.25}
    del hours["train_bpd_mean"], hours["test_bpd"]
    assert (
        progress_line(hours)
        == "step 100 | epoch 0.5 | train 3.000 | baseline 1.500 | accuracy 0.250 | 354 img/s | 1:02:05 elapsed"
    )
    assert progress_line({**metrics, "step": 0}, max_steps=400).endswith("| 2:51 elapsed")  # no rate yet
    assert progress_line({**metrics, "step": 400}, max_steps=400).endswith("2:51 elapsed, ~0:00 left")
    assert progress_line({**metrics, "step": 500}, max_steps=400).endswith("2:51 elapsed, ~0:00 left")


def test_a_training_window_by_hand() -> None:
    from glowtorch.train.diagnostics import StepRecord, TrainingWindow

    window = TrainingWindow()
    assert window.summary() == {}
    window.add(StepRecord(1, 2.0, 5.0, 17, 0, 0.5), clip=1.0)
    window.add(StepRecord(2, 4.0, 12.0, 3, 2, 1.0), clip=1.0)  # exactly at the clip: not clipped
    window.add(StepRecord(3, 3.0, 11.0, 9, 1, 1.5), clip=1.0)
    window.add(StepRecord(4, 4.0, 12.0, 8, 0, 0.25), clip=1.0)  # ties keep the first
    assert window.summary() == {
        "train_bpd_mean": 13.0 / 4, "train_bpd_worst_batch": 4.0, "train_worst_step": 2,
        "train_worst_image_bpd": 12.0, "train_worst_image": 3, "train_worst_image_step": 2,
        "train_images_above_10": 3, "grad_norm_max": 1.5, "clipped_steps": 1,
    }  # fmt: skip
    unclipped = TrainingWindow()
    unclipped.add(StepRecord(1, -1.0, -1.0, 0, 0, 9.0), clip=0.0)  # no clipping asked: none counted
    assert unclipped.summary()["clipped_steps"] == 0 and unclipped.summary()["train_bpd_worst_batch"] == -1.0
    small = TrainingWindow()
    small.add(StepRecord(5, 1.0, 1.0, 0, 0, 0.125), clip=1.0)
    assert small.summary()["grad_norm_max"] == 0.125 and small.summary()["train_worst_step"] == 5


def test_a_step_record_gathered_on_one_process() -> None:
    import torch

    from glowtorch.distributed import Distributed
    from glowtorch.train.diagnostics import OUTLIER_BPD, gather_step_record

    single = Distributed()
    per_image = torch.tensor([1.0, OUTLIER_BPD, 12.5, 3.0])  # exactly 10 is not an outlier
    record = gather_step_record(7, per_image, torch.tensor([40, 41, 42, 43]), torch.tensor(0.75), single)
    assert (record.step, record.bpd, record.worst_image_bpd, record.worst_image, record.outliers) == (
        7, pytest.approx(26.5 / 4), 12.5, 42, 1)  # fmt: skip
    assert record.grad_norm == 0.75
    assert gather_step_record(7, torch.tensor([1.0, float("nan")]), torch.tensor([0, 1]), torch.tensor(1.0),
                              single) is None  # fmt: skip


def test_the_probed_convolutions_are_the_first_levels_coupling_network() -> None:
    from glowtorch.model import GlowConfig
    from glowtorch.precision import _coupling_shapes

    mnist = GlowConfig(image_shape=(1, 28, 28), levels=2, depth=1, hidden_channels=512)
    # squeezed to 4 x 14 x 14: the network reads 2 channels and writes a shift and a scale for the other 2
    assert _coupling_shapes(mnist, 16) == [(16, 2, 512, 3, 14), (16, 512, 512, 1, 14), (16, 512, 4, 3, 14)]
    rgb = GlowConfig(image_shape=(3, 32, 32), levels=2, depth=1, hidden_channels=64, coupling="additive")
    assert _coupling_shapes(rgb, 8) == [(8, 6, 64, 3, 16), (8, 64, 64, 1, 16), (8, 64, 6, 3, 16)]  # a shift only
    assert all(type(v) is int for shape in _coupling_shapes(rgb, 8) for v in shape)  # sizes, not floats


def test_the_probe_counts_flops_and_takes_medians(monkeypatch) -> None:
    import torch

    from glowtorch import precision

    seen = []

    def paired(float32, bfloat16, device, seconds):
        seen.append((float32, bfloat16, device, seconds))
        return [1e-6, 2e-6, 3e-6, 4e-6, 100e-6], [2e-6, 1e-6, 1e-6, 1e-6, 1e-6]

    monkeypatch.setattr(precision, "_paired_seconds", paired)
    monkeypatch.setattr(precision, "_RATES", {})
    shapes = [(2, 3, 4, 3, 5), (1, 4, 4, 1, 5)]
    flops = 2 * 2 * 3 * 4 * 9 * 25 + 2 * 1 * 4 * 4 * 1 * 25  # 2 x batch x in x out x kernel^2 x size^2 = 11,600
    rates = real_probe_rates(shapes)
    assert rates == (pytest.approx(flops / 3e-6 / 1e9), pytest.approx(flops / 1e-6 / 1e9), 2.0)
    (float32, bfloat16, device, seconds), = seen  # fmt: skip
    assert device == torch.device("cpu") and seconds == 0.3
    for tensors, dtype in ((float32, torch.float32), (bfloat16, torch.bfloat16)):
        assert [(tuple(x.shape), tuple(w.shape), padding) for x, w, padding in tensors] == [
            ((2, 3, 5, 5), (4, 3, 3, 3), 1), ((1, 4, 5, 5), (4, 4, 1, 1), 0)]  # fmt: skip
        assert all(x.dtype == w.dtype == dtype for x, w, _ in tensors)
        assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _, _ in tensors)
    assert real_probe_rates(shapes) is rates and len(seen) == 1  # measured once per process


def test_the_probe_times_pairs_on_its_own_clock(monkeypatch) -> None:
    import types

    import torch

    from glowtorch import precision

    now, calls = [0.0], []

    def conv2d(x, w, padding):  # a float32 convolution takes 1/1024 s, a bfloat16 one 1/2048 s
        calls.append(x.dtype)
        now[0] += 1 / 1024 if x.dtype == torch.float32 else 1 / 2048

    monkeypatch.setattr(precision, "F", types.SimpleNamespace(conv2d=conv2d))
    monkeypatch.setattr(precision, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    x32, x16 = torch.zeros(1), torch.zeros(1, dtype=torch.bfloat16)
    float32, bfloat16 = [(x32, None, 1), (x32, None, 0)], [(x16, None, 1), (x16, None, 0)]
    # a float32 pass is 1/512 s: 2 repeats reach SAMPLE_SECONDS (2 ms); a pair then takes 3/512 s, and pairs
    # go on past the 5 needed while the 2 x 0.02 s last: 7 pairs
    f32, bf16 = precision._paired_seconds(float32, bfloat16, torch.device("cpu"), 0.02)
    assert f32 == [1 / 512] * 7 and bf16 == [1 / 1024] * 7
    warm, pairs = calls[:4], calls[4:]
    assert warm == [torch.float32] * 2 + [torch.bfloat16] * 2
    firsts = [pairs[i * 8] for i in range(7)]  # each pair is 2 x 4 convolutions; the order alternates
    assert firsts == [torch.float32, torch.bfloat16] * 3 + [torch.float32]
    now[0], calls[:] = 0.0, []
    f32, _ = precision._paired_seconds(float32, bfloat16, torch.device("cpu"), 0.0)
    assert len(f32) == precision.MIN_PAIRS  # no time given: the fewest pairs that decide anything
    slow = [(x32, None, 1)] * 200  # a pass of 0.2 s: one repeat, and at most 50 pairs however long
    now[0], calls[:] = 0.0, []
    f32, _ = precision._paired_seconds(slow, slow[:1], torch.device("cpu"), 1000.0)
    assert len(f32) == 50 and f32[0] == 200 / 1024
    assert len(calls) == (1 + 50) * (200 + 1)  # the warm-up and 50 pairs, each pass once


# --------------------------------------------------------------------------- the fitted class prior
def test_a_fitted_class_prior_is_each_class_mean_and_std_at_every_top_position() -> None:
    import torch
    from torch.testing import assert_close

    from conftest import random_model
    from glowtorch.class_prior import fit_class_prior
    from glowtorch.preprocess import dequantize

    # three levels and a 2x2 top: the last latent (not the second), each position its own statistics
    model = random_model(num_classes=2, class_prior="spatial", image_shape=(1, 16, 16), levels=3, depth=1, scale=0.1)
    labels = torch.tensor([0, 1, 0, 1, 1])  # class 0 has exactly the two images it needs
    pixels = torch.randint(0, 256, (5, 1, 16, 16), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    x = dequantize(pixels, 8, generator=torch.Generator().manual_seed(5)).double()  # the draw fit_class_prior makes
    top = model.encode(x, labels)[0][-1]
    assert top.shape[2:] == (2, 2) and len(model.encode(x, labels)[0]) == 3
    fit_class_prior(model, pixels, labels, seed=5)
    mean, log_std = model.top_prior_params(5, labels)
    for c in (0, 1):
        chosen = top[labels == c]
        assert_close(mean[labels == c][0], chosen.mean(0), atol=1e-9, rtol=0)
        assert_close(log_std[labels == c][0].exp(), chosen.std(0, correction=0), atol=1e-9, rtol=0)


# --------------------------------------------------------------------------- image files
def test_every_image_mode_is_brought_to_0_255_by_hand() -> None:
    import numpy as np
    from PIL import Image

    from glowtorch.data import DataError, image_array

    sixteen = Image.fromarray(np.array([[0, 257, 32767, 65535]], dtype=np.uint16))  # mode I;16
    assert sixteen.mode.startswith("I;16")
    assert image_array(sixteen).tolist() == [[0, 1, 127, 255]]  # x 255/65535, rounded half up: 127.498 -> 127
    wide = Image.fromarray(np.array([[0, 128, 65535]], dtype=np.int32), mode="I")
    assert image_array(wide).tolist() == [[0, 0, 255]]  # 128 x 255/65535 = 0.498 -> 0
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0, 1 / 510]], dtype=np.float32), mode="F")
    assert image_array(floats).tolist() == [[0, 128, 255, 1]]  # 127.5 -> 128, 0.5 -> 1: half up
    assert image_array(floats, channels=3).tolist() == [[[0] * 3, [128] * 3, [255] * 3, [1] * 3]]
    assert image_array(floats, channels=1).shape == (1, 4)
    for bad, words in [
        (np.array([[0.0, 1.5]], dtype=np.float32), "outside 0..1"),
        (np.array([[-0.5, 1.0]], dtype=np.float32), "outside 0..1"),
        (np.array([[0.0, np.nan]], dtype=np.float32), "outside 0..1"),
    ]:
        with pytest.raises(DataError, match=words):
            image_array(Image.fromarray(bad, mode="F"))
    for bad in ([[0, 65536]], [[-1, 5]]):
        with pytest.raises(DataError, match="outside 0..65535"):
            image_array(Image.fromarray(np.array(bad, dtype=np.int32), mode="I"))
    rgba = Image.fromarray(np.array([[[10, 20, 30, 40]]], dtype=np.uint8), mode="RGBA")
    assert image_array(rgba, keep_alpha=True).tolist() == [[[10, 20, 30, 40]]]
    assert image_array(rgba).tolist() == [[[10, 20, 30]]]  # alpha dropped
    assert image_array(rgba, channels=1).tolist() == [[round(0.299 * 10 + 0.587 * 20 + 0.114 * 30)]]
    gray = Image.fromarray(np.array([[7, 9]], dtype=np.uint8), mode="L")
    assert image_array(gray).tolist() == [[7, 9]] and image_array(gray, channels=3).tolist() == [[[7] * 3, [9] * 3]]
    palette = gray.convert("P")
    assert image_array(palette, keep_alpha=True).shape == (1, 2, 4) and image_array(palette).shape == (1, 2, 3)
    bits = Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1")
    assert image_array(bits).tolist() == [[0, 255]]


# --------------------------------------------------------------------------- reference files
def test_reference_files_beside_the_weights_come_before_demo(tmp_path) -> None:
    from glowtorch.reference import DIRECTIONS_FILE, SCORES_FILE, find_reference_files

    assert find_reference_files(tmp_path) == (None, None)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / SCORES_FILE).write_bytes(b"x")
    (tmp_path / "demo" / DIRECTIONS_FILE).write_bytes(b"x")
    assert find_reference_files(tmp_path) == (tmp_path / "demo" / SCORES_FILE, tmp_path / "demo" / DIRECTIONS_FILE)
    (tmp_path / SCORES_FILE).write_bytes(b"x")
    (tmp_path / DIRECTIONS_FILE).mkdir()  # a folder of that name is not the file
    assert find_reference_files(tmp_path) == (tmp_path / SCORES_FILE, tmp_path / "demo" / DIRECTIONS_FILE)


@pytest.mark.parametrize(
    "scores, examples, words",
    [
        ([1.0, 2.0], (2, 1, 4, 4), None),
        ([[1.0, 2.0]], (2, 1, 4, 4), "one number"),
        ([], (2, 1, 4, 4), "one number"),
        ([1, 2], (2, 1, 4, 4), "one number"),  # integers
        ([1.0, float("nan")], (2, 1, 4, 4), "one number"),
        ([1.0, float("inf")], (2, 1, 4, 4), None),  # an impossible image scores infinity: kept
        ([1.0], (2, 4, 4), "examples must be"),
        ([1.0], (2, 3, 4, 4), "examples must be"),  # another shape than the model's
        ([1.0], (0, 1, 4, 4), None),  # no examples is fine
    ],
)
def test_test_scores_are_checked_when_read(tmp_path, scores, examples, words) -> None:
    import torch

    from glowtorch.latent_files import save_latents
    from glowtorch.reference import read_test_scores, write_test_scores

    path = tmp_path / "s.safetensors"
    values = torch.tensor(scores)
    images = torch.zeros(examples, dtype=torch.uint8)
    if values.is_floating_point() and values.dim() == 1:
        write_test_scores(path, values, images, "test")
    else:
        save_latents(path, {"bits_per_dim": values, "examples": images}, {})
    if words is None:
        read, kept = read_test_scores(path, (1, 4, 4))
        assert torch.equal(read, values.float()) and torch.equal(kept, images)
        assert torch.equal(read_test_scores(path)[1], images)  # no shape given: any (M, C, H, W)
    else:
        with pytest.raises(ValueError, match=words):
            read_test_scores(path, (1, 4, 4))


def test_auto_precision_probes_the_models_own_convolutions_at_batch_16_at_most(monkeypatch) -> None:
    import torch

    from glowtorch import precision
    from glowtorch.model import GlowConfig

    asked = []
    monkeypatch.setattr(precision, "probe_rates", lambda shapes, device: asked.append(shapes) or
                        precision.ProbeRates(100.0, 130.0, 1.25))  # fmt: skip
    config = GlowConfig(image_shape=(1, 28, 28), levels=2, depth=1, hidden_channels=32)
    choice = precision.resolve_precision("auto", config, batch=64)
    assert asked == [precision._coupling_shapes(config, 16)] and choice.precision == "bfloat16"
    precision.resolve_precision("auto", config, batch=4)
    assert asked[-1] == precision._coupling_shapes(config, 4)
    assert choice.record()["probe_speedup_low"] == 1.25
    assert precision.resolve_precision("auto", config, dtype=torch.float64).precision == "float32" and len(asked) == 2
    assert precision.resolve_precision("bfloat16", config).how == "set explicitly" and len(asked) == 2


def test_a_step_record_gathered_from_two_processes() -> None:
    import types

    import torch

    from glowtorch.train.diagnostics import gather_step_record

    def gathered(other: list[float], mine: torch.Tensor, indices: torch.Tensor):
        def all_reduce_sum(packed):
            seen.append(packed.clone())
            return packed + torch.tensor(other, dtype=torch.float64)

        seen: list = []
        me = types.SimpleNamespace(rank=1, world_size=2, all_reduce_sum=all_reduce_sum)
        return gather_step_record(3, mine, indices, torch.tensor(2.0), me), seen[0]

    # process 0 saw bits/dim 2 and 30 (the worst, training image 5); this is process 1: 4 and 12 (image 9)
    record, sent = gathered(
        [(2.0 + 30.0) / 4, 1.0, 30.0, 5.0, 0.0, 0.0], torch.tensor([4.0, 12.0]), torch.tensor([8, 9])
    )
    assert sent.tolist() == [(4.0 + 12.0) / 4, 1.0, 0.0, 0.0, 12.0, 9.0]  # its own slot: 2 + 2 x rank
    assert (record.bpd, record.outliers, record.worst_image_bpd, record.worst_image) == (12.0, 2, 30.0, 5)
    # now the worst image is this process's: 12 at image 9 against process 0's 10.5 at image 50
    record, _ = gathered([2.5, 1.0, 10.5, 50.0, 0.0, 0.0], torch.tensor([4.0, 12.0]), torch.tensor([8, 9]))
    assert (record.worst_image_bpd, record.worst_image, record.outliers) == (12.0, 9, 2)


def test_throughput_is_images_over_seconds_since_the_last_restart(monkeypatch) -> None:
    import types

    from glowtorch.train import diagnostics

    now = [10.0]
    monkeypatch.setattr(diagnostics, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    rate = diagnostics.Throughput()
    rate.add(32)
    rate.add(32)
    now[0] = 12.0
    assert rate.rate() == 32.0
    rate.restart()
    rate.add(16)
    now[0] = 16.0
    assert rate.rate() == 4.0


@pytest.mark.parametrize("num_classes", [0, 10])
def test_reference_data_are_the_test_splits_scores_and_the_training_splits_directions(tmp_path, num_classes) -> None:
    import torch

    from conftest import randomize
    from glowtorch import Glow, GlowConfig
    from glowtorch.data import load_dataset_for
    from glowtorch.evaluate import score_images
    from glowtorch.latent import attribute_directions, read_directions
    from glowtorch.reference import build_reference, read_test_scores

    torch.manual_seed(0)
    config = GlowConfig(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=8, num_classes=num_classes)
    model = randomize(Glow(config), scale=0.05).eval()
    scores_path, directions_path = build_reference(model, tmp_path / "demo", "digits", None, progress=False)
    test = load_dataset_for((1, 8, 8), "digits", train=False)
    train = load_dataset_for((1, 8, 8), "digits", train=True)
    labels = test.labels if num_classes else None
    scores, examples = read_test_scores(scores_path)
    assert torch.equal(scores, score_images(model, test.images, labels).bits_per_dim.float())
    assert torch.equal(
        examples, test.images[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:32]]
    )
    names, table = train.attribute_table()
    expected = attribute_directions(model, train.images, table.bool(), train.labels if num_classes else None)
    directions = read_directions(directions_path, model)
    assert list(directions) == names == [str(i) for i in range(10)]
    for i, name in enumerate(names):
        for got, level in zip(directions[name], expected, strict=True):
            assert torch.equal(got, level[i])


def test_a_test_scores_file_missing_either_tensor_is_refused(tmp_path) -> None:
    import torch

    from glowtorch.latent_files import save_latents
    from glowtorch.reference import read_test_scores

    for tensors in ({"bits_per_dim": torch.ones(2)}, {"examples": torch.zeros(1, 1, 2, 2, dtype=torch.uint8)}):
        save_latents(tmp_path / "s.safetensors", tensors, {})
        with pytest.raises(ValueError, match="needs bits_per_dim and examples"):
            read_test_scores(tmp_path / "s.safetensors")
