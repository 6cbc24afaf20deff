"""What a careful or hostile user runs into: damaged files, interrupted or finished runs, paths taken from
files, non-finite values, a full disk, distributed edge cases, console output. Each case ends in one
line and a non-zero exit (or, where it is not an error, in the right result), and damages nothing."""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import randomize, tiny_config
from glowtorch import Glow, save_model
from glowtorch.checkpoint import checkpoint_paths
from glowtorch.cli import main
from glowtorch.data import DataError, load_dataset, read_image_files
from test_cli import TINY
from test_data import make_mnist


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("glowtorch: error: ") and "Traceback" not in err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--dataset", "digits", "--steps", "6", "--out", str(out), *TINY]) == 0
    return out


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


# --------------------------------------------------------------------------- damaged data files
def test_damaged_gzip_mnist_is_one_line_naming_the_file(tmp_path, capsys) -> None:
    make_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # damaged deflate bytes, not merely a truncated file
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not a readable IDX file"):
        load_dataset("mnist", tmp_path)
    code, _, err = run(capsys, "train", "--dataset", "mnist", "--data-dir", tmp_path, "--out", tmp_path / "r", *TINY)
    assert code == 1 and one_line(err) and "train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "r").exists()


def decompression_bomb(path: Path, side: int = 20000) -> Path:
    """A 1x1 grayscale PNG whose header claims ``side`` x ``side`` pixels (CRC fixed)."""
    Image.fromarray(np.zeros((1, 1), np.uint8), "L").save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", side, side)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def test_decompression_bomb_is_skipped_in_a_folder_and_refused_when_named(tmp_path, capsys, finished_run) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(20):
        Image.fromarray(np.full((8, 8), 10 * i, np.uint8), "L").save(folder / f"ok{i}.png")
    decompression_bomb(folder / "bomb.png")
    data = load_dataset("folder", folder, train=True, channels=1)
    assert len(data) + len(load_dataset("folder", folder, train=False, channels=1)) == 20
    assert "skipped 1 " in capsys.readouterr().out
    with pytest.raises(DataError, match="bomb.png declares more pixels than glowtorch decodes"):
        read_image_files([folder / "bomb.png"], (1, 8, 8))
    code, _, err = run(capsys, "encode", finished_run, folder / "bomb.png", "-o", tmp_path / "z.safetensors")
    assert code == 1 and one_line(err) and "bomb.png" in err


# --------------------------------------------------------------------------- runs: resume and overwrite
def test_zero_byte_newest_state_falls_back_to_the_older_one(finished_run, tmp_path, capsys) -> None:
    run_dir = copy_run(finished_run, tmp_path / "run")
    newest, older = checkpoint_paths(run_dir)[-1], checkpoint_paths(run_dir)[-2]
    newest.write_bytes(b"")
    code, out, err = run(capsys, "train", "--dataset", "digits", "--steps", "9", "--out", run_dir, "--resume", *TINY)
    assert code == 0, err
    assert f"from step {int(older.stem.split('_')[1])}" in out
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 9]


def test_every_state_file_empty_is_one_line(finished_run, tmp_path, capsys) -> None:
    run_dir = copy_run(finished_run, tmp_path / "run")
    for path in checkpoint_paths(run_dir):
        path.write_bytes(b"")
    code, _, err = run(capsys, "train", "--dataset", "digits", "--steps", "9", "--out", run_dir, "--resume", *TINY)
    assert code == 1 and one_line(err) and "no readable training state" in err


@pytest.mark.parametrize("remove", ["checkpoints", "checkpoints+model", "checkpoints+model+metrics.jsonl"])
def test_a_run_without_checkpoints_is_still_a_run(finished_run, tmp_path, capsys, remove: str) -> None:
    import shutil

    run_dir = copy_run(finished_run, tmp_path / "run")
    for name in remove.split("+"):
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code, _, err = run(capsys, "train", "--dataset", "digits", "--steps", "3", "--out", run_dir, *TINY)
    assert code == 1 and one_line(err) and "already holds a training run" in err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_resuming_a_finished_run_writes_no_second_line(finished_run, tmp_path, capsys) -> None:
    run_dir = copy_run(finished_run, tmp_path / "run")
    metrics = (run_dir / "metrics.jsonl").read_text()
    code, out, err = run(capsys, "train", "--dataset", "digits", "--steps", "6", "--out", run_dir, "--resume", *TINY)
    assert code == 0, err
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    assert "already finished" in out


def test_temporary_files_of_a_killed_save_are_cleaned_everywhere(finished_run, tmp_path, capsys) -> None:
    run_dir = copy_run(finished_run, tmp_path / "run")
    stale = [run_dir / ".bpd.png.glowtorch-tmp-ab12cd_9",
             run_dir / "model" / ".model.safetensors.glowtorch-tmp-zzzzzzzz",
             run_dir / "samples" / ".step_00000009.png.glowtorch-tmp-0a1b2c3d",
             run_dir / "checkpoints" / ".step_00000009.pt.glowtorch-tmp-q_q_q_q_"]  # fmt: skip
    # The user's own hidden files, with names like temporaries of other programs: never touched.
    users = [run_dir / ".thesis.tmpl", run_dir / "model" / ".notes.tmp1", run_dir / "samples" / ".bpd.png.tmp123",
             run_dir / "checkpoints" / ".x.glowtorch-tmp-short", run_dir / ".a.glowtorch-tmp-ABCDEFGH"]  # fmt: skip
    for path in stale + users:
        path.write_bytes(b"half")
    code, _, err = run(capsys, "train", "--dataset", "digits", "--steps", "9", "--out", run_dir, "--resume", *TINY)
    assert code == 0, err
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"half" for p in users)


def test_a_failed_train_leaves_no_empty_folder(tmp_path, capsys) -> None:
    out = tmp_path / "new" / "run"
    code, _, err = run(capsys, "train", "--dataset", "digits", "--out", out, *TINY, "--batch-size", "5000")
    assert code == 1 and one_line(err) and "fewer than one batch" in err
    assert not out.exists() and not out.parent.exists()


# --------------------------------------------------------------------------- paths and values from files
def test_decode_keeps_names_from_a_file_inside_the_output_folder(finished_run, tmp_path, capsys) -> None:
    from glowtorch import load_model
    from glowtorch.latent import encode_images, write_latents

    model = load_model(finished_run)
    images = load_dataset("digits", train=False).images[:4]
    zs = encode_images(model, images)
    names = ["../escaped", str(tmp_path / "absolute"), "fine"]  # one name fewer than latents
    latents = write_latents(tmp_path / "z.safetensors", model, zs, names=names, checkpoint=finished_run / "model")
    out = tmp_path / "out" / "decoded"
    code, stdout, err = run(capsys, "decode", latents, "-o", out)
    assert code == 0, err
    written = sorted(p.name for p in out.iterdir())
    assert written == ["absolute.png", "escaped.png", "fine.png", "image_0003.png"]
    assert not (tmp_path / "out" / "escaped.png").exists() and not (tmp_path / "absolute.png").exists()
    assert np.array_equal(np.asarray(Image.open(out / "fine.png")), images[2, 0].numpy())


def test_non_finite_temperatures_and_latents_are_refused() -> None:
    torch.manual_seed(0)
    model = randomize(Glow(tiny_config(image_shape=(1, 8, 8))), scale=0.02)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        model.sample(4, temperature=math.inf)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        model.sample(4, temperature=[0.5, math.nan])
    zs, _ = model.encode(torch.rand(2, 1, 8, 8) - 0.5)
    zs[0][0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="latent 0 contains NaN or infinite values"):
        model.decode(zs)


# --------------------------------------------------------------------------- a full disk
def test_a_full_disk_is_one_line_and_says_how_to_continue(finished_run, tmp_path, capsys, monkeypatch) -> None:
    from safetensors import SafetensorError

    import glowtorch.checkpoint

    run_dir = copy_run(finished_run, tmp_path / "run")
    good = {p: p.read_bytes() for p in (run_dir / "model").iterdir()}

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')  # fmt: skip

    monkeypatch.setattr(glowtorch.checkpoint, "save_file", full)
    code, _, err = run(capsys, "train", "--dataset", "digits", "--steps", "9", "--out", run_dir, "--resume", *TINY)
    assert code == 1 and one_line(err), err
    assert "model.safetensors" in err and "disk is full" in err and "--resume continues from step 6" in err
    assert {p: p.read_bytes() for p in (run_dir / "model").iterdir()} == good
    assert not [p for p in run_dir.rglob(".*.tmp*")]


def test_written_files_get_the_users_usual_mode(tmp_path) -> None:
    umask = os.umask(0o022)
    try:
        torch.manual_seed(0)
        directory = save_model(randomize(Glow(tiny_config())), tmp_path / "m")
    finally:
        os.umask(umask)
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name


# --------------------------------------------------------------------------- console
def test_training_prints_lines_a_person_reads(tmp_path, capsys) -> None:
    code, out, _ = run(capsys, "train", "--dataset", "digits", "--steps", "6", "--out", tmp_path / "r", *TINY)
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(lines) == 2 and "{" not in out
    assert lines[0].startswith("step 3 | epoch ") and "| test " in lines[0] and "bits/dim (median " in lines[0]
    assert "elapsed" in lines[0] and "left" in lines[0]


def test_a_closed_pipe_is_not_an_error() -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(f"{sys.executable} -m glowtorch presets | head -1", shell=True, capture_output=True,
                            text=True, env=env, timeout=120)  # fmt: skip
    assert result.stdout.count("\n") == 1 and result.stderr == ""


def test_third_party_future_warnings_are_kept_out_of_the_terminal() -> None:
    import warnings

    from glowtorch.cli import quiet_third_party_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party_warnings()
        warnings.warn_explicit("deprecated inside torch", FutureWarning, "lowering.py", 1, "torch._inductor.lowering")
        warnings.warn_explicit("ours", FutureWarning, "cli.py", 1, "glowtorch.cli")
        warnings.warn_explicit("a user warning from torch", UserWarning, "x.py", 1, "torch.nn.modules")
    assert [str(w.message) for w in caught] == ["ours", "a user warning from torch"]


def test_a_dead_peer_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    import torch.distributed

    import glowtorch.train

    def dead_peer(*args, **kwargs):
        raise torch.distributed.DistBackendError(
            "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1234\n"
            "Exception raised from recvBytes at ...\nframe #0: ..."
        )

    monkeypatch.setattr(glowtorch.train, "train", dead_peer)
    code, _, err = run(capsys, "train", "--dataset", "digits", "--steps", "3", "--out", tmp_path / "r", *TINY)
    assert code == 1 and one_line(err) and "another process of the job failed" in err


# --------------------------------------------------------------------------- distributed initialization
def _init_worker(rank: int, world: int, port: int, init_images: int, out: str) -> None:
    from glowtorch.distributed import init_distributed, shutdown
    from glowtorch.train import TrainConfig, Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")  # fmt: skip
    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    data = load_dataset("digits")
    config = TrainConfig(batch_size=16, init_images=init_images, steps=1)
    trainer = Trainer(tiny_config(image_shape=(1, 8, 8)), config, data, None, f"{out}/run", dist=dist)
    trainer.initialize()
    torch.save(trainer.model.state_dict(), f"{out}/init_{init_images}_{rank}.pt")
    shutdown()


@pytest.mark.parametrize("init_images", [1001, 4000])  # uneven shares; more than the 1,500 training images
def test_distributed_init_with_more_init_images_than_exist(tmp_path, init_images: int) -> None:
    """Each process takes a share of min(init_images, N) images and the statistics are weighted by the
    shares' sizes: the same ActNorm init as one process (before, 4000 crashed rank 1 on an empty share)."""
    import torch.multiprocessing as mp

    from conftest import free_port
    from glowtorch.train import TrainConfig, Trainer

    mp.spawn(_init_worker, args=(2, free_port(), init_images, str(tmp_path)), nprocs=2, join=True)
    config = TrainConfig(batch_size=16, init_images=init_images, steps=1)
    single = Trainer(tiny_config(image_shape=(1, 8, 8)), config, load_dataset("digits"), None, tmp_path / "one")
    single.initialize()
    for rank in (0, 1):
        state = torch.load(tmp_path / f"init_{init_images}_{rank}.pt", weights_only=True)
        for name, tensor in single.model.state_dict().items():
            torch.testing.assert_close(state[name], tensor, rtol=1e-5, atol=2e-6, msg=name)


# --------------------------------------------------------------------------- latent tools
def test_directions_and_manipulation_on_a_conditional_model(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--conditional", "--steps", "3", "--out", str(run_dir), *TINY]) == 0
    directions = tmp_path / "d.safetensors"
    code, out, err = run(capsys, "directions", run_dir, "--dataset", "digits", "--limit", "300", "-o", directions)
    assert code == 0, err
    image = tmp_path / "a.png"
    Image.fromarray(load_dataset("digits", train=False).images[0, 0].numpy(), "L").save(image)
    code, _, err = run(capsys, "manipulate", run_dir, image, "--direction", directions, "--attribute", "3",
                       "--label", "0", "--scales", "0,1", "-o", tmp_path / "m.png")  # fmt: skip
    assert code == 0, err
    frames = np.asarray(Image.open(tmp_path / "m.png"))
    assert frames.shape[1] > frames.shape[0]  # two frames side by side


def test_encode_takes_any_finite_float_and_refuses_integer_pixels() -> None:
    torch.manual_seed(0)
    model = randomize(Glow(tiny_config(image_shape=(1, 8, 8))), scale=0.05)
    samples = model.sample(16, temperature=1.0, generator=torch.Generator().manual_seed(0))
    samples[0, 0, 0, 0] = 0.9  # an edited image pushed out of the data range
    zs, _ = model.encode(samples)
    torch.testing.assert_close(model.decode(zs), samples, rtol=0, atol=1e-5)
    assert torch.isfinite(model.log_prob(samples)).all()
    with pytest.raises(ValueError, match="glowtorch.dequantize"):
        model.encode(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8))
    with pytest.raises(ValueError, match="must lie in"):  # initialization still wants data-range input
        model.initialize(samples * 100)


# --------------------------------------------------------------------------- exactness on steep models
def steep_model(factor: float = 1e-6) -> Glow:
    """A float32 model that loses what float32 can hold of one channel: the first step's ActNorm shrinks
    channel 0 by ``factor`` before the 1x1 convolution mixes it with channels of order 1, so the inverse
    amplifies float32 rounding by about 1/factor (as training can make a model around some images)."""
    torch.manual_seed(0)
    model = Glow(tiny_config(image_shape=(1, 8, 8), depth=1))
    model.initialize(torch.rand(64, 1, 8, 8) - 0.5)
    with torch.no_grad():
        model.levels[0].layers[0].actnorm.log_scale[0, 0] = math.log(factor)
    return model.eval()


def test_exact_paths_recompute_in_float64_what_float32_cannot_give_back(tmp_path) -> None:
    from glowtorch.latent import decode_images, encode_images, interpolate, round_trip_report
    from glowtorch.preprocess import dequantize

    model = steep_model()
    images = load_dataset("digits", train=False).images[:40]
    with torch.no_grad():
        x = dequantize(images, 8, noise=False)
        plain = model.decode(model.encode(x)[0])
    assert (plain - x).abs().max() > 1 / 256, "float32 alone gets pixels wrong on this model"
    zs = encode_images(model, images)
    assert zs[0].dtype == torch.float64
    assert torch.equal(decode_images(model, zs), images)
    frames = interpolate(model, images[0], images[1], steps=3)
    assert torch.equal(frames[0], images[0]) and torch.equal(frames[-1], images[1])
    report = round_trip_report(model, images)
    assert report["float64_images"] > 0 and report["wrong_pixels"] > 0 and report["exact_wrong_pixels"] == 0
    assert report["amplification"] > 1e4
    well = round_trip_report(steep_model(factor=1.0), images)
    assert well["float64_images"] == 0 and well["amplification"] < 1e4
    assert encode_images(steep_model(factor=1.0), images)[0].dtype == torch.float32  # float64 only where needed


def test_latent_files_say_when_they_hold_float64(tmp_path, capsys) -> None:
    from glowtorch.latent import load_latents

    model_dir = save_model(steep_model(), tmp_path / "steep")
    image = tmp_path / "a.png"
    digit = load_dataset("digits", train=False).images[3, 0].numpy()
    Image.fromarray(digit, "L").save(image)
    code, _, err = run(capsys, "encode", model_dir, image, "-o", tmp_path / "z.safetensors")
    assert code == 0, err
    tensors, metadata = load_latents(tmp_path / "z.safetensors")
    assert metadata["precision"] == "float64" and tensors["z0"].dtype == torch.float64  # float32 cannot hold it
    code, _, err = run(capsys, "decode", tmp_path / "z.safetensors", "-o", tmp_path / "out")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")), digit)
    code, out, err = run(capsys, "evaluate", model_dir, "--dataset", "digits", "--round-trip", "--no-progress")
    assert code == 0, err
    assert "need float64" in out and "exact paths: 0 wrong pixels" in out
