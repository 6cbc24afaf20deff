"""Hand-computed values for the data and run-folder code: a step's batch (``train.batches``), the files
a run folder holds (``train.run_dir``), the prepared store (``data.store``), the dataset readers
(``data.sources``) and latent files (``latent_files``). Each case is built from a few images or bytes made
here, so what the code must give can be written down next to it."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch

from glowtorch.data import DataError, Dataset
from glowtorch.data.augment import epoch_order, step_generator
from glowtorch.distributed import Distributed
from glowtorch.preprocess import dequantize
from glowtorch.train import BatchSource, TrainConfig


# --------------------------------------------------------------------------- train.batches
def _ramp_dataset(n: int = 20) -> Dataset:
    """``n`` 1x2x2 images whose pixels name the image (image i holds 10*i .. 10*i+3), labels i % 3."""
    images = (torch.arange(n)[:, None] * 10 + torch.arange(4)).to(torch.uint8).reshape(n, 1, 2, 2)
    return Dataset(images, torch.arange(n) % 3, ["a", "b", "c"])


def _source(config: TrainConfig, rank: int = 0, world: int = 1, labels: bool = True, n_bits: int = 8, context_of=None):
    return BatchSource(_ramp_dataset(), config, n_bits, labels, Distributed(rank=rank, world_size=world),
                       torch.device("cpu"), context_of)  # fmt: skip


def test_a_steps_images_are_the_epochs_permutation_cut_into_batches() -> None:
    config = TrainConfig(batch_size=6, steps=1, seed=3)
    source = _source(config)
    assert source.steps_per_epoch == 3  # 20 // 6: the last 2 images of an epoch's order are not used
    for step in range(7):
        epoch, index = divmod(step, 3)
        expected = epoch_order(20, 3, epoch)[6 * index : 6 * index + 6]
        assert torch.equal(source.global_indices(step), expected)
        assert torch.equal(source(step).indices, expected)


def test_a_fresh_source_asked_for_a_later_epoch_first_gives_that_epochs_batch() -> None:
    """A resumed run's first call is in any epoch: the cache of the epoch in progress starts empty."""
    config = TrainConfig(batch_size=6, steps=1, seed=3)
    for epoch in (0, 1, 2):
        first = _source(config).global_indices(3 * epoch + 1)
        assert torch.equal(first, epoch_order(20, 3, epoch)[6:12])


def test_the_noise_and_labels_of_a_batch_by_hand() -> None:
    """``x`` is the images dequantized with the step's stream-5 uniform noise; ``y`` the images' labels."""
    config = TrainConfig(batch_size=4, steps=1, seed=1, flip=False)
    x, y, indices, context, draws = _source(config, n_bits=5)(2)
    images = _ramp_dataset().images[indices]
    noise = torch.rand((4, 1, 2, 2), generator=step_generator(1, 2, stream=5))
    assert torch.equal(x, dequantize(images, 5, noise=noise))
    assert torch.equal(draws, noise)  # handed on, for a variational dequantizer
    bins = torch.div(images, 8, rounding_mode="floor").float()  # 5 bits: 32 bins of 8 levels
    assert torch.allclose(x, (bins + noise) / 32 - 0.5, atol=1e-6)
    assert torch.equal(y, indices % 3)
    assert context is None
    assert _source(config, labels=False)(2).y is None


def test_the_shifts_and_perturbations_of_a_batch_by_hand() -> None:
    """Shifts from the step's stream 6, then each pixel replaced with probability ``perturb`` by a value in
    0..255, both drawn from stream 7 (which pixels, then which values): the streams pin the batch."""
    from glowtorch.data.augment import random_shift
    from glowtorch.preprocess import to_uint8

    config = TrainConfig(batch_size=8, steps=1, seed=4, flip=False, shift=1, perturb=0.5)
    batch = _source(config)(3)
    raw = _ramp_dataset().images[batch.indices]
    shifted = random_shift(raw, 1, step_generator(4, 3, stream=6))
    generator = step_generator(4, 3, stream=7)
    hit = torch.rand((8, 1, 2, 2), generator=generator) < 0.5
    values = torch.randint(0, 256, (8, 1, 2, 2), generator=generator, dtype=torch.uint8)
    expected = torch.where(hit, values, shifted)
    assert torch.equal(to_uint8(batch.x, 8), expected)
    assert not torch.equal(shifted, raw)  # the case has shifts and hits
    assert 0 < hit.float().mean() < 1


def test_each_process_reads_its_rows_of_the_global_batch() -> None:
    """Two processes' shares, stacked, are one process's batch: the same images, noise, flips and shifts."""
    config = TrainConfig(batch_size=8, steps=1, seed=2, flip=True, shift=1)
    whole = _source(config)(4)
    halves = [_source(config, rank, 2)(4) for rank in (0, 1)]
    assert torch.equal(torch.cat([h.x for h in halves]), whole.x)
    assert torch.equal(torch.cat([h.indices for h in halves]), whole.indices)
    assert torch.equal(halves[1].indices, whole.indices[4:])


def test_the_context_is_made_from_the_flipped_images_before_the_noise() -> None:
    config = TrainConfig(batch_size=4, steps=1, seed=2, flip=True)
    seen = []

    def context_of(images):
        seen.append(images.clone())
        return images.float().sum(dim=(1, 2, 3))

    batch = _source(config, context_of=context_of)(0)
    flip = torch.rand(4, generator=step_generator(2, 0, stream=4)) < 0.5
    raw = _ramp_dataset().images[batch.indices]
    expected = torch.where(flip[:, None, None, None], raw.flip(3), raw)
    assert flip.any() and not flip.all()  # the case shows both
    assert torch.equal(seen[0], expected)
    assert torch.equal(batch.context, expected.float().sum(dim=(1, 2, 3)))


# --------------------------------------------------------------------------- train.run_dir
def _run_dir(path):
    from glowtorch.train.run_dir import RunDir

    return RunDir(path)


def test_the_metrics_kept_on_resume_are_those_up_to_the_checkpoints_step(tmp_path) -> None:
    run = _run_dir(tmp_path)
    lines = [{"step": s, "test_bpd": 2.0 - s / 100} for s in (10, 20, 30)]
    run.metrics_path.write_text("".join(json.dumps(m) + "\n" for m in lines))
    assert run.keep_metrics_until(20) == lines[:2]  # the step itself is kept
    assert [json.loads(line) for line in run.metrics_path.read_text().splitlines()] == lines[:2]
    assert run.keep_metrics_until(9) == []
    assert run.metrics_path.read_text() == ""
    assert _run_dir(tmp_path / "none").keep_metrics_until(5) == []  # no metrics yet: nothing to keep
    assert not (tmp_path / "none" / "metrics.jsonl").exists()


def test_resolved_values_are_added_to_the_written_config(tmp_path) -> None:
    run = _run_dir(tmp_path)
    run.resolve(precision="float32")  # before the config is written: kept, nothing written yet
    assert not (tmp_path / "train_config.json").exists()
    options = TrainConfig(batch_size=8, steps=3)
    run.write_config(options, {"precision": "float32"})
    run.resolve(decay_steps=40)
    written = json.loads((tmp_path / "train_config.json").read_text())
    assert written["resolved"] == {"precision": "float32", "decay_steps": 40}
    assert written["batch_size"] == 8
    assert _run_dir(tmp_path).read_config() == (options, {"precision": "float32", "decay_steps": 40})


def test_opening_a_run_folder(tmp_path) -> None:
    from glowtorch.checkpoint import CheckpointError
    from glowtorch.files import exclusive_temp

    # a new run: the folder is made, glowtorch's own temporaries go, other files stay
    run = _run_dir(tmp_path / "run")
    (tmp_path / "run").mkdir()
    stale = exclusive_temp(tmp_path / "run" / "metrics.jsonl")
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert run.open(resume=False) is None
    assert not stale.exists()
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    # a folder that holds a run is refused without --resume
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="already holds a training run"):
        run.open(resume=False)
    # --resume with a model but no checkpoint: refused (the model stays); the temporaries of the run's
    # folders are gone first
    (tmp_path / "run" / "model").mkdir()
    stale = [exclusive_temp(tmp_path / "run" / name / "x") for name in ("model",)]
    with pytest.raises(CheckpointError, match="holds a model but no checkpoint"):
        run.open(resume=True)
    assert not any(p.exists() for p in stale) and (tmp_path / "run" / "model").is_dir()
    # --resume of a run stopped before its first checkpoint and model: starts again, and says so
    (tmp_path / "run" / "model").rmdir()
    said = []
    assert run.open(resume=True, warn=said.append) is None
    assert len(said) == 1 and "starting it again" in said[0]
    assert not run.has_checkpoint()
    # a new run's folder is made with its parents
    assert _run_dir(tmp_path / "new" / "deeper" / "run").open(resume=False) is None
    assert (tmp_path / "new" / "deeper" / "run").is_dir()
    # --resume of a folder that holds no run: nothing to resume
    with pytest.raises(CheckpointError, match="nothing to resume"):
        _run_dir(tmp_path / "empty").open(resume=True, warn=said.append)
    assert len(said) == 1


def test_a_resumed_run_reads_its_options_and_newest_state(tmp_path) -> None:
    from glowtorch.checkpoint import save_training_state

    run = _run_dir(tmp_path)
    options = TrainConfig(batch_size=4, steps=9)
    run.write_config(options, {"precision": "bfloat16"})
    state = {"step": 7, "weights": torch.arange(3.0)}
    save_training_state(tmp_path, {"step": 3, "weights": torch.zeros(3)}, 3, keep=2)
    assert run.has_checkpoint()
    resumed = _run_dir(tmp_path)
    import glowtorch.train.run_dir as run_dir_module

    real = run_dir_module.load_training_state
    run_dir_module.load_training_state = lambda path, warn=None: {**state, "path": str(path)}
    try:
        loaded = resumed.open(resume=True)
    finally:
        run_dir_module.load_training_state = real
    assert loaded["step"] == 7 and loaded["path"] == str(tmp_path)
    assert (resumed.options, resumed.resolved) == (options, {"precision": "bfloat16"})


def test_an_evaluations_files_and_what_a_failed_save_says(tmp_path, monkeypatch) -> None:
    import glowtorch.train.run_dir as run_dir_module
    from conftest import tiny_config
    from glowtorch.checkpoint import checkpoint_paths
    from glowtorch.model import Glow

    model = Glow(tiny_config())
    grid = torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8)
    run = _run_dir(tmp_path)
    run.save(5, {"step": 5, "elapsed_s": 60.0, "test_bpd": 3.0}, grid, 2, model, {"step": 5}, keep=2)
    from glowtorch.images import save_grid

    save_grid(grid, tmp_path / "expected.png", 2, scale=2)  # each pixel drawn as 2x2
    assert (tmp_path / "samples" / "step_00000005.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert json.loads(run.metrics_path.read_text()) == {"step": 5, "elapsed_s": 60.0, "test_bpd": 3.0}
    assert (tmp_path / "bpd.png").is_file() and (tmp_path / "model" / "model.safetensors").is_file()
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["step_00000005.pt"]

    def full(*args, **kwargs):
        raise OSError(28, "cannot write: the disk is full")

    monkeypatch.setattr(run_dir_module, "save_training_state", full)
    with pytest.raises(OSError, match="the disk is full; nothing written before was lost: --resume continues from "
                                      "step 5$"):  # fmt: skip
        run.save(9, {"step": 9}, grid, 2, model, {}, keep=2)
    (tmp_path / "checkpoints" / "step_00000005.pt").unlink()
    with pytest.raises(OSError, match="no checkpoint yet: train again into another --out$"):
        run.save(9, {"step": 9}, grid, 2, model, {}, keep=2)
    fresh = _run_dir(tmp_path / "fresh")
    monkeypatch.setattr(run_dir_module, "save_model", full)
    with pytest.raises(OSError, match="no checkpoint yet: --resume starts the run again$"):
        fresh.save(9, {"step": 9}, grid, 2, model, {}, keep=2)
    # a process other than the main one writes nothing
    from glowtorch.train.run_dir import RunDir

    other = RunDir(tmp_path / "other", Distributed(rank=1, world_size=2))
    other.save(1, {"step": 1}, grid, 2, model, {}, keep=2)
    assert not (tmp_path / "other").exists()


# --------------------------------------------------------------------------- latent_files
def test_the_fingerprint_is_a_hash_of_the_config_and_weights_by_hand() -> None:
    import hashlib

    from conftest import tiny_config
    from glowtorch.latent_files import model_fingerprint
    from glowtorch.model import Glow

    torch.manual_seed(0)
    model = Glow(tiny_config())
    config = model.config.to_dict()
    for field, value in (("class_prior", "channel"), ("coupling_network", "actnorm"), ("zero_conv_padding", 0.0),
                         ("condition", ""), ("context_features", 32), ("dequantization", "uniform"),
                         ("dequantizer_channels", 16), ("dequantizer_depth", 2)):  # fmt: skip
        assert config.pop(field) == value  # fields added later, at their first value: left out of the hash
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    assert model_fingerprint(model) == digest.hexdigest()[:16]
    other = Glow(tiny_config(context_features=16))  # a later field at another value is in the hash
    other.load_state_dict(model.state_dict(), strict=False)
    assert model_fingerprint(other) != model_fingerprint(model)


def test_latents_written_and_read_back(tmp_path) -> None:
    from conftest import random_model
    from glowtorch.latent_files import load_latents, model_fingerprint, read_latents, save_latents, write_latents

    model = random_model()
    zs = [torch.arange(6.0).reshape(1, 6) + i for i in range(3)]
    path = write_latents(tmp_path / "z.safetensors", model, zs, y=torch.tensor([4]), names=["../a b.png"],
                         checkpoint=tmp_path / "run" / ".." / "model", context=torch.ones(1, 2))  # fmt: skip
    tensors, metadata = load_latents(path)
    assert sorted(tensors) == ["context", "y", "z0", "z1", "z2"]
    assert metadata == {"glowtorch": "latents", "model_fingerprint": model_fingerprint(model), "precision": "float32",
                        "files": '["../a b.png"]', "checkpoint": str((tmp_path / "model").resolve())}  # fmt: skip
    read = read_latents(path)
    assert [z.tolist() for z in read.zs] == [z.tolist() for z in zs]
    assert read.y.tolist() == [4] and read.names == ["a_b.png"] and read.context.tolist() == [[1.0, 1.0]]
    read.check_model(model, path)
    with pytest.raises(ValueError, match="made with another model"):
        read.check_model(random_model(seed=1), path)
    tensors["zoom"] = torch.zeros(2)  # another tensor whose name starts with z is not a level
    save_latents(tmp_path / "extra.safetensors", tensors, metadata)
    assert len(read_latents(tmp_path / "extra.safetensors").zs) == 3
    bare = read_latents(
        write_latents(tmp_path / "b.safetensors", model, [zs[0].double()], checkpoint="pretrained:mnist")
    )
    assert bare.y is None and bare.context is None and bare.names == ["image_0000"]
    assert (
        bare.checkpoint == "pretrained:mnist" and load_latents(tmp_path / "b.safetensors")[1]["precision"] == "float64"
    )


def test_names_from_a_latent_file_become_safe_distinct_file_names() -> None:
    from glowtorch.latent_files import _safe_names

    given = ["dir/x.png", "C:\\u\\y.png", "x.png", "..", "a?b*.png", 7, "", "é.png"]
    assert _safe_names(given, 9) == [
        "x.png", "y.png", "image_0002", "image_0003", "a_b_.png", "image_0005", "image_0006", "é.png", "image_0008",
    ]  # fmt: skip
    assert _safe_names(["a", "b", "c"], 2) == ["a", "b"]


def test_direction_files_and_their_checks(tmp_path) -> None:
    from conftest import random_model
    from glowtorch.latent_files import (
        load_latents,
        model_fingerprint,
        read_directions,
        save_latents,
        write_directions,
    )

    model = random_model()
    shapes = model.latent_shapes
    directions = [torch.arange(2 * int(np.prod(s)), dtype=torch.float32).reshape(2, *s) for s in shapes]
    path = write_directions(tmp_path / "d.safetensors", model, directions, ["smile", "age"], "celeba")
    assert load_latents(path)[1]["dataset"] == "celeba"
    read = read_directions(path, model)
    assert list(read) == ["smile", "age"]
    assert all(torch.equal(read["age"][i], directions[i][1]) for i in range(len(shapes)))
    metadata = {"glowtorch": "directions", "model_fingerprint": model_fingerprint(model)}
    tensors = {f"z{i}": d for i, d in enumerate(directions)}
    for names, why in (('["a", "a"]', "does not name"), ('["a", ""]', "does not name"), ("[]", "does not name"),
                       ("x", "does not name"), ('["a"]', "shapes")):  # fmt: skip
        save_latents(tmp_path / "bad.safetensors", tensors, {**metadata, "attributes": names})
        with pytest.raises(ValueError, match=why):
            read_directions(tmp_path / "bad.safetensors", model)
    nan = {**tensors, "z0": tensors["z0"].clone().index_fill_(0, torch.tensor([1]), float("nan"))}
    save_latents(tmp_path / "nan.safetensors", nan, {**metadata, "attributes": '["a", "b"]'})
    with pytest.raises(ValueError, match="not finite"):
        read_directions(tmp_path / "nan.safetensors", model)
    ints = {k: v.long() for k, v in tensors.items()}
    save_latents(tmp_path / "int.safetensors", ints, {**metadata, "attributes": '["a", "b"]'})
    with pytest.raises(ValueError, match="not finite"):
        read_directions(tmp_path / "int.safetensors", model)
    save_latents(
        tmp_path / "lat.safetensors", tensors, {**metadata, "glowtorch": "latents", "attributes": '["a", "b"]'}
    )
    with pytest.raises(ValueError, match="not a glowtorch directions file"):
        read_directions(tmp_path / "lat.safetensors", model)


# --------------------------------------------------------------------------- data.sources
def test_md5_and_the_cache_folder(tmp_path, monkeypatch) -> None:
    import hashlib
    from pathlib import Path

    from glowtorch.data.sources import _md5, default_cache_dir

    data = bytes(range(256)) * 5000  # more than one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    assert _md5(tmp_path / "f") == hashlib.md5(data).hexdigest()
    monkeypatch.setenv("GLOWTORCH_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("GLOWTORCH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == Path(tmp_path) / ".cache" / "glowtorch"


def test_fetch_writes_checked_files_into_a_new_folder_and_skips_those_present(tmp_path) -> None:
    import hashlib

    from glowtorch.data.sources import RemoteFile, fetch

    data = bytes(range(256)) * 9000  # more than one block of the copy
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "a.bin").write_bytes(data)
    remote = RemoteFile("a.bin", (tmp_path / "served" / "a.bin").as_uri(), hashlib.md5(data).hexdigest())
    target = tmp_path / "new" / "deeper"
    fetch([remote], target, "test")
    assert (target / "a.bin").read_bytes() == data
    assert sorted(p.name for p in target.iterdir()) == ["a.bin"]
    (target / "a.bin").write_bytes(b"kept")  # present: not downloaded again
    fetch([remote], target, "test")
    assert (target / "a.bin").read_bytes() == b"kept"
    wrong = RemoteFile("b.bin", remote.url, "0" * 32)
    with pytest.raises(DataError, match="wrong checksum"):
        fetch([wrong], target, "test")
    assert sorted(p.name for p in target.iterdir()) == ["a.bin"]


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_idx_files_by_hand(tmp_path, monkeypatch) -> None:
    from glowtorch.data.sources import _read_idx, load_mnist

    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "x").write_bytes(_idx(images))
    assert np.array_equal(_read_idx(tmp_path / "x"), images)
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(_idx(images))
    assert np.array_equal(_read_idx(tmp_path / "x.gz"), images)
    (tmp_path / "y").write_bytes(_idx(images)[:-1])
    with pytest.raises(DataError, match=r"truncated: header says \(2, 3, 4\), found 23 values"):
        _read_idx(tmp_path / "y")
    (tmp_path / "z").write_bytes(b"\x00\x00\x09\x01" + _idx(images)[4:])
    with pytest.raises(DataError, match="bad magic"):
        _read_idx(tmp_path / "z")
    # the file names MNIST is found under: plain, gzipped, and with a dot before "idx"
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "t10k-images.idx3-ubyte").write_bytes(_idx(images))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.array([7, 1], np.uint8)))
    test = load_mnist(folder, train=False)
    assert torch.equal(test.images, torch.from_numpy(images).unsqueeze(1)) and test.labels.tolist() == [7, 1]
    assert test.labels.dtype == torch.int64
    monkeypatch.setenv("GLOWTORCH_CACHE", str(tmp_path))  # no --data-dir: the cache's mnist folder
    assert torch.equal(load_mnist(None, train=False).images, test.images)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.array([7, 1, 2], np.uint8)))
    with pytest.raises(DataError, match="do not match"):
        load_mnist(folder, train=False)


def test_cifar_batches_and_their_checks(tmp_path) -> None:
    from glowtorch.data.sources import load_cifar10, read_cifar_batch

    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    (tmp_path / "batch").write_bytes(pickle.dumps({b"data": data, b"labels": [3, 0]}))
    images, labels = read_cifar_batch(tmp_path / "batch")
    assert images.shape == (2, 3, 32, 32) and labels == [3, 0]
    assert images[1, 2, 31, 31] == data[1, 3071] and images[0, 1, 0, 0] == data[0, 1024]
    for bad, why in (
        ({b"data": data, b"labels": [3]}, "one list entry per image"),
        ({b"data": data, b"labels": [3, 10]}, "classes 0 to 9"),
        ({b"data": data, b"labels": [True, 0]}, "classes 0 to 9"),
        ({b"data": data[:, :100], b"labels": [3, 0]}, "3072"),
        ([1, 2], "not a dict"),
    ):
        (tmp_path / "bad").write_bytes(pickle.dumps(bad))
        with pytest.raises(DataError, match=why):
            read_cifar_batch(tmp_path / "bad")
    # a folder that holds cifar-10-batches-py is read through it; the test split is test_batch alone
    inner = tmp_path / "outer" / "cifar-10-batches-py"
    inner.mkdir(parents=True)
    (inner / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [3, 0]}))
    test = load_cifar10(tmp_path / "outer", train=False)
    assert test.labels.tolist() == [3, 0] and test.class_names[3] == "cat"
    with pytest.raises(DataError, match="data_batch_1, data_batch_2"):
        load_cifar10(tmp_path / "outer", train=True)


def test_cifar_without_a_folder_is_downloaded_checked_and_unpacked_into_the_cache(tmp_path, monkeypatch) -> None:
    import hashlib
    import shutil
    import tarfile

    import glowtorch.data.sources as sources

    data = np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072)
    (tmp_path / "batch").write_bytes(pickle.dumps({b"data": data, b"labels": [5, 6]}))
    archive = tmp_path / "served.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "batch", arcname="cifar-10-batches-py/test_batch")
    monkeypatch.setattr(sources, "CIFAR_URL", archive.as_uri())
    monkeypatch.setattr(sources, "CIFAR_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setenv("GLOWTORCH_CACHE", str(tmp_path / "cache"))
    test = sources.load_cifar10(None, train=False)
    assert test.labels.tolist() == [5, 6] and test.images[1, 0, 0, 0] == data[1, 0]
    assert (tmp_path / "cache" / "cifar10" / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    assert (tmp_path / "cache" / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    assert torch.equal(sources.load_cifar10(None, train=False).images, test.images)  # now read from the cache
    (tmp_path / "cache" / "cifar10" / "cifar-10-python.tar.gz").write_bytes(b"damaged")
    shutil.rmtree(tmp_path / "cache" / "cifar10" / "cifar-10-batches-py")
    with pytest.raises(DataError, match="not a readable CIFAR-10 archive"):
        sources.load_cifar10(None, train=False)


def test_celeba_attributes_and_split_by_hand(tmp_path) -> None:
    from glowtorch.data.sources import celeba_split, read_celeba_attributes

    rows = [f"{i:06d}.jpg " + ("1 -1" if i % 3 else "-1 1") for i in range(1, 21)]
    rows[0] += " 1"  # a value past the named attributes is not read
    (tmp_path / "list.txt").write_text("20\nSmiling Young\n" + "\n".join(rows) + "\n\n")
    files, names, values = read_celeba_attributes(tmp_path / "list.txt")
    assert names == ["Smiling", "Young"] and len(files) == 20 and files[0] == "000001.jpg"
    assert values[:3].tolist() == [[True, False], [True, False], [False, True]]
    train_files, _, train_values = celeba_split(tmp_path / "list.txt", True)
    test_files, _, test_values = celeba_split(tmp_path / "list.txt", False)
    assert train_files == files[:18] and test_files == files[18:]  # int(0.9 * 20) = 18
    assert torch.equal(torch.cat([train_values, test_values]), values)
    (tmp_path / "bad.txt").write_text("1\nSmiling\n000001.jpg yes\n")
    with pytest.raises(DataError, match="not a CelebA attribute file"):
        read_celeba_attributes(tmp_path / "bad.txt")


def test_celeba_and_svhn_folders(tmp_path, monkeypatch) -> None:
    from scipy.io import savemat

    from glowtorch.data.image_files import read_image
    from glowtorch.data.sources import load_celeba, load_svhn

    cache = tmp_path / "cache"
    monkeypatch.setenv("GLOWTORCH_CACHE", str(cache))
    names = [f"{i:06d}.png" for i in range(1, 11)]
    for i, name in enumerate(names):
        _png(cache / "celeba" / "img_align_celeba" / name, 6, 4, value=i, mode="RGB")
    rows = "\n".join(f"{name} {'1' if i % 2 else '-1'}" for i, name in enumerate(names))
    with pytest.raises(DataError, match="CelebA needs"):  # the attribute file is missing
        load_celeba(None, train=True)
    (cache / "celeba" / "list_attr_celeba.txt").write_text(f"10\nSmiling\n{rows}\n")
    train = load_celeba(None, train=True, size=4, limit=3)  # no --data-dir: the cache's celeba folder
    assert train.images.shape == (3, 3, 4, 4) and train.attribute_names == ["Smiling"]
    assert train.attributes.flatten().tolist() == [False, True, False] and train.labels is None
    first = read_image(cache / "celeba" / "img_align_celeba" / names[0], 3, 4)
    assert torch.equal(train.images[0], first)
    assert len(load_celeba(None, train=True, size=4)) == 9 and len(load_celeba(None, train=False, size=4)) == 1
    (cache / "celeba" / "img_align_celeba" / names[9]).unlink()
    with pytest.raises(DataError, match="1 CelebA images listed in .* are missing or unreadable"):
        load_celeba(None, train=False, size=4)
    shutil.rmtree(cache / "celeba" / "img_align_celeba")
    with pytest.raises(DataError, match="CelebA needs"):  # the images are missing
        load_celeba(None, train=True)
    # SVHN: (H, W, C, N) pixels, label 10 for the digit 0
    pixels = np.arange(32 * 32 * 3 * 2).astype(np.uint8).reshape(32, 32, 3, 2)
    (cache / "svhn").mkdir()
    savemat(cache / "svhn" / "test_32x32.mat", {"X": pixels, "y": np.array([[10], [3]], np.uint8)})
    svhn = load_svhn(None, train=False)
    assert svhn.labels.tolist() == [0, 3] and svhn.images[1, 2, 5, 7] == pixels[5, 7, 2, 1]
    assert svhn.class_names == [str(i) for i in range(10)]
    (cache / "svhn" / "test_32x32.mat").write_bytes(b"junk")
    with pytest.raises(DataError, match="is not an SVHN .mat file"):
        load_svhn(None, train=False)


def test_svhn_is_downloaded_when_missing(tmp_path, monkeypatch) -> None:
    import hashlib

    from scipy.io import savemat

    import glowtorch.data.sources as sources

    served = tmp_path / "served"
    served.mkdir()
    savemat(served / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 1), np.uint8), "y": np.array([[4]], np.uint8)})
    monkeypatch.setattr(sources, "SVHN_URL", served.as_uri() + "/")
    monkeypatch.setitem(
        sources.SVHN_MD5, "test_32x32.mat", hashlib.md5((served / "test_32x32.mat").read_bytes()).hexdigest()
    )
    assert sources.load_svhn(tmp_path / "svhn", train=False).labels.tolist() == [4]
    assert (tmp_path / "svhn" / "test_32x32.mat").read_bytes() == (served / "test_32x32.mat").read_bytes()


def test_an_image_folder_read_by_hand(tmp_path, capsys) -> None:
    from glowtorch.data.image_files import read_image
    from glowtorch.data.sources import load_image_folder

    for i in range(3):
        _png(tmp_path / "train" / "a" / f"{i}.png", 6, 8, value=i, mode="RGB")
    _png(tmp_path / "train" / "b" / "x.png", 6, 8, value=9, mode="RGB")
    (tmp_path / "train" / "b" / "y.png").write_text("junk")
    _png(tmp_path / "test" / "b" / "z.png", 6, 8, mode="RGB")
    data = load_image_folder(tmp_path, train=True, channels=3, size=4)
    files = [tmp_path / "train" / "a" / f"{i}.png" for i in range(3)] + [tmp_path / "train" / "b" / "x.png"]
    assert torch.equal(data.images, torch.stack([read_image(f, 3, 4) for f in files]))
    assert data.labels.tolist() == [0, 0, 0, 1] and data.class_names == ["a", "b"]
    assert "skipped 1 unreadable" in capsys.readouterr().out
    native = load_image_folder(tmp_path, train=False, channels=1)  # no size: the first image's own
    assert native.images.shape == (1, 1, 6, 8) and native.labels.tolist() == [1]
    with pytest.raises(DataError, match="--data-dir is required"):
        load_image_folder(None, train=True)


def test_load_source_resizes_to_the_asked_size() -> None:
    from sklearn.datasets import load_digits

    from glowtorch.data.dataset import resize_images
    from glowtorch.data.sources import load_digits_dataset, load_source

    digits, raw = load_digits_dataset(train=False), load_digits()
    assert len(digits) == 297 and digits.labels.tolist() == raw.target[1500:].tolist()
    assert digits.images[5, 0].tolist() == np.round(raw.images[1505] * 255 / 16).astype(int).tolist()
    resized = load_source("digits", None, train=False, image_size=4)
    assert torch.equal(resized.images, resize_images(digits.images, 4))
    assert torch.equal(load_source("digits", None, train=False, image_size=8).images, digits.images)


# --------------------------------------------------------------------------- data.image_files
def _png(path, height: int, width: int, value: int = 0, mode: str = "L"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (height, width) if mode == "L" else (height, width, 3)
    array = (np.arange(int(np.prod(shape))) * 7 + value).astype(np.uint8).reshape(shape)
    Image.fromarray(array, mode).save(path)
    return array


def test_a_folders_splits_and_classes_by_hand(tmp_path) -> None:
    from glowtorch.data.image_files import folder_listing

    names = [f"a/{i:02d}.png" for i in range(5)] + [f"b/{i:02d}.png" for i in range(7)] + ["top.png"]
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    train, train_labels, classes = folder_listing(tmp_path, train=True)
    test, test_labels, _ = folder_listing(tmp_path, train=False)
    assert classes == ["a", "b"] and folder_listing(tmp_path, train=False)[2] == ["a", "b"]
    assert test == [tmp_path / "b/04.png"] and test_labels.tolist() == [1]  # the 10th of the sorted files
    assert train == [tmp_path / n for n in names if n != "b/04.png"]
    assert train_labels.tolist() == [0] * 5 + [1] * 6 + [0]  # a file outside any class folder: class 0
    # train/ and test/ folders are the splits; without class folders there are no labels
    split = tmp_path / "split"
    for name in ("train/x.png", "train/y.png", "test/z.png"):
        (split / name).parent.mkdir(parents=True, exist_ok=True)
        (split / name).write_bytes(b"")
    assert folder_listing(split, True) == ([split / "train/x.png", split / "train/y.png"], None, None)
    assert folder_listing(split, False) == ([split / "test/z.png"], None, None)
    # every 10th file: the 10th, 20th, ... of the sorted names
    many = tmp_path / "many"
    many.mkdir()
    for i in range(25):
        (many / f"{i:02d}.png").write_bytes(b"")
    assert folder_listing(many, False)[0] == [many / "09.png", many / "19.png"]
    assert len(folder_listing(many, True)[0]) == 23
    # class folders under train/ and test/: an index means the same class in both splits
    classes = tmp_path / "classes"
    for name in ("train/a/1.png", "train/c/2.png", "test/b/3.png", "test/c/4.png"):
        (classes / name).parent.mkdir(parents=True, exist_ok=True)
        (classes / name).write_bytes(b"")
    train_split, test_split = folder_listing(classes, True), folder_listing(classes, False)
    assert train_split[2] == test_split[2] == ["a", "b", "c"]
    assert train_split[1].tolist() == [0, 2] and test_split[1].tolist() == [1, 2]
    with pytest.raises(DataError, match="is not a directory"):
        folder_listing(tmp_path / "top.png", True)


def test_reading_a_list_of_image_files(tmp_path) -> None:
    from glowtorch.data.image_files import first_image_size, read_image_files, read_images

    gray = _png(tmp_path / "g.png", 3, 5, value=1)
    colour = _png(tmp_path / "c.png", 3, 5, value=2, mode="RGB")
    (tmp_path / "junk.png").write_text("no")
    images, kept = read_images([tmp_path / "junk.png", tmp_path / "g.png", tmp_path / "c.png"], 1, None, "t")
    assert kept == [1, 2] and images[0].tolist() == [gray.tolist()]
    assert first_image_size([tmp_path / "junk.png", tmp_path / "c.png"], 3) == (3, 5)
    with pytest.raises(DataError, match="no readable images"):
        first_image_size([tmp_path / "junk.png"] * 50 + [tmp_path / "g.png"], 1)
    with pytest.raises(DataError, match="no readable images"):
        first_image_size([], 1)
    stacked = read_image_files([tmp_path / "c.png", tmp_path / "c.png"], (3, 3, 5))
    assert stacked.shape == (2, 3, 3, 5) and torch.equal(stacked[1], torch.from_numpy(colour).permute(2, 0, 1))
    assert torch.equal(read_image_files([tmp_path / "g.png"], (1, 3, 5))[0, 0], torch.from_numpy(gray))
    for paths, shape, why in (
        ([tmp_path / "g.png"], (3, 3, 5), "is a grayscale image but the model expects 3"),
        ([tmp_path / "c.png"], (1, 3, 5), "is a colour image but the model expects 1"),
        ([tmp_path / "g.png"], (1, 5, 3), "is 5x3 but the model expects 3x5"),
        ([tmp_path / "g.png"], (1, 3, 4), "is 5x3 but the model expects 4x3"),
        ([], (1, 3, 5), "no images given"),
        ([tmp_path / "junk.png"], (1, 3, 5), "not a readable image"),
    ):
        with pytest.raises(DataError, match=why):
            read_image_files(paths, shape)


# --------------------------------------------------------------------------- data.store
def test_an_array_writer_file_is_the_npy_of_what_was_written(tmp_path) -> None:
    from glowtorch.data.store import HEADER_BYTES, ArrayWriter, _npy_header

    header = _npy_header((5, 1, 2, 3), HEADER_BYTES)
    assert len(header) == HEADER_BYTES == 192 and header.startswith(b"\x93NUMPY\x01\x00")
    assert struct.unpack("<H", header[8:10]) == (182,) and header.endswith(b"\n")
    assert b"'shape': (5, 1, 2, 3)" in header
    with pytest.raises(ValueError, match="header too long"):
        _npy_header((5, 1, 2, 3), 64)
    text = repr({"descr": "|u1", "fortran_order": False, "shape": (5, 1, 2, 3)})
    exact = _npy_header((5, 1, 2, 3), 11 + len(text))  # the text fills it: no padding, still a header
    assert exact.endswith(text.encode() + b"\n")
    with pytest.raises(ValueError, match="header too long"):
        _npy_header((5, 1, 2, 3), 10 + len(text))
    images = np.arange(5 * 6, dtype=np.uint8).reshape(5, 1, 2, 3)
    writer = ArrayWriter(tmp_path / "a.npy", capacity=9, image_shape=(1, 2, 3))
    writer.write(images[:3])
    writer.write(images[3:].astype(np.int64))  # converted to bytes as written
    writer.close()
    assert writer.count == 5
    read = np.load(tmp_path / "a.npy")
    assert read.dtype == np.uint8 and np.array_equal(read, images)
    assert (tmp_path / "a.npy").stat().st_size == 192 + 30


def test_the_listing_checksum_is_of_names_sizes_and_times(tmp_path) -> None:
    import hashlib
    import os

    from glowtorch.data.store import _listing_checksum

    (tmp_path / "c").mkdir()
    paths = [tmp_path / "a.png", tmp_path / "c" / "b.png"]
    for i, path in enumerate(paths):
        path.write_bytes(b"x" * (i + 3))
        os.utime(path, ns=(10**9, (i + 1) * 10**9))
    expected = hashlib.sha256(f"a.png\x003\x00{10**9}\nc/b.png\x004\x00{2 * 10**9}\n".encode()).hexdigest()
    assert _listing_checksum(paths, tmp_path) == expected
    os.utime(paths[1], ns=(10**9, 3 * 10**9))
    assert _listing_checksum(paths, tmp_path) != expected


def test_a_decoding_workers_chunk(tmp_path) -> None:
    from PIL import Image

    from glowtorch.data.image_files import read_image
    from glowtorch.data.store import _decode_chunk

    for name, value in (("a.png", 10), ("c.png", 200)):
        Image.fromarray(np.full((6, 6), value, np.uint8), "L").save(tmp_path / name)
    (tmp_path / "b.png").write_text("not an image")
    paths = [str(tmp_path / n) for n in ("a.png", "b.png", "c.png")]
    images, kept = _decode_chunk((paths, 1, 4))
    assert kept == [0, 2]
    assert images.shape == (2, 1, 4, 4) and images.dtype == np.uint8
    assert np.array_equal(images[1], read_image(tmp_path / "c.png", 1, 4).numpy())
    assert images[0].tolist() == np.full((1, 4, 4), 10).tolist()
    none, kept = _decode_chunk(([paths[1]], 3, 5))
    assert none.shape == (0, 3, 5, 5) and kept == []
    assert _decode_chunk(([paths[1]], 1, None))[0].shape == (0, 1, 1, 1)


def test_a_prepared_digits_store_by_hand(tmp_path) -> None:
    import os
    import stat

    from glowtorch.data import load_dataset
    from glowtorch.data.store import open_store, prepare_store
    from glowtorch.files import current_umask

    manifest = prepare_store("digits", None, tmp_path / "store")
    assert stat.S_IMODE(os.stat(tmp_path / "store").st_mode) == 0o777 & ~current_umask()  # not mkdtemp's 0700
    assert (manifest["format"], manifest["version"], manifest["dataset"]) == ("glowtorch prepared store", 1, "digits")
    assert (manifest["image_size"], manifest["channels"], manifest["source"]) == (8, 1, None)
    assert manifest["splits"]["train"] == {
        "count": 1500, "shape": [1500, 1, 8, 8], "images": "images.npy", "labels": "labels.npy",
        "class_names": [str(i) for i in range(10)], "skipped": 0,
    }  # fmt: skip
    assert manifest["splits"]["test"]["count"] == 297
    assert json.loads((tmp_path / "store" / "manifest.json").read_text()) == manifest
    for train in (True, False):
        stored, direct = open_store(tmp_path / "store", train), load_dataset("digits", train=train)
        assert torch.equal(stored.images, direct.images) and torch.equal(stored.labels, direct.labels)
        assert stored.class_names == direct.class_names and stored.attributes is None
    assert open_store(tmp_path / "store", image_size=8).images.shape == (1500, 1, 8, 8)
    with pytest.raises(DataError, match="already holds a prepared store"):
        prepare_store("digits", None, tmp_path / "store")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_a_prepared_celeba_store_by_hand(tmp_path) -> None:
    """CelebA is decoded in worker processes, centre-cropped and resized; its split follows the attribute file."""
    from glowtorch.data.image_files import read_image
    from glowtorch.data.store import open_store, prepare_store

    names = [f"{i:06d}.png" for i in range(1, 11)]
    for i, name in enumerate(names):
        _png(tmp_path / "celeba" / "img_align_celeba" / name, 6, 5, value=3 * i, mode="RGB")
    rows = "\n".join(f"{name} {'1' if i % 3 else '-1'}" for i, name in enumerate(names))
    (tmp_path / "celeba" / "list_attr_celeba.txt").write_text(f"10\nSmiling\n{rows}\n")
    out = tmp_path / "new" / "deeper" / "store"
    manifest = prepare_store("celeba", tmp_path / "celeba", out, image_size=4, workers=1)
    assert manifest["splits"]["train"]["count"] == 9 and manifest["splits"]["test"]["count"] == 1
    assert manifest["splits"]["train"]["attribute_names"] == ["Smiling"] and manifest["image_size"] == 4
    train = open_store(out, train=True)
    assert train.attributes.flatten().tolist() == [bool(i % 3) for i in range(9)] and train.labels is None
    expected = read_image(tmp_path / "celeba" / "img_align_celeba" / names[4], 3, 4)
    assert torch.equal(train.images[4], expected)
    # without --image-size: CelebA at 64x64, a folder at its first readable image's shorter side
    assert prepare_store("celeba", tmp_path / "celeba", tmp_path / "s64", workers=1)["image_size"] == 64
    folder = tmp_path / "folder"
    (folder / "a.png").parent.mkdir()
    (folder / "a.png").write_text("not an image")
    for i in range(11):
        _png(folder / f"b{i:02d}.png", 6, 5 + i % 2)
    assert prepare_store("folder", folder, tmp_path / "s5", channels=1, workers=1)["image_size"] == 5


def test_a_prepare_that_fails_on_bad_data_says_so_even_on_a_full_disk(tmp_path, monkeypatch) -> None:
    import glowtorch.data.store as store

    monkeypatch.setattr(store, "disk_full", lambda *args: True)  # only an OSError is a disk's error
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_text("not an image")
    with pytest.raises(DataError, match="no readable images"):
        store.prepare_store("folder", tmp_path / "images", tmp_path / "out", workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_a_stores_attributes_must_match_its_images(tmp_path) -> None:
    from glowtorch.data.store import MANIFEST, _write_split, open_store

    images = np.arange(3 * 4, dtype=np.uint8).reshape(3, 1, 2, 2)
    attributes = torch.tensor([[True, False], [False, False], [True, True]])
    entry = _write_split(tmp_path / "train", images, {"attributes": attributes, "attribute_names": ["x", "y"]})
    assert entry == {"count": 3, "shape": [3, 1, 2, 2], "images": "images.npy", "attributes": "attributes.npy",
                     "attribute_names": ["x", "y"]}  # fmt: skip
    manifest = {"format": "glowtorch prepared store", "splits": {"train": entry}}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    data = open_store(tmp_path)
    assert torch.equal(data.attributes, attributes) and data.attribute_names == ["x", "y"] and data.labels is None
    assert torch.equal(data.images, torch.from_numpy(images))
    np.save(tmp_path / "train" / "attributes.npy", attributes.numpy()[:2])
    with pytest.raises(DataError, match="attributes.npy does not match"):
        open_store(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "format": "other"}))
    with pytest.raises(DataError, match="not a valid manifest"):
        open_store(tmp_path)
