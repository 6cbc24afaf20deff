"""The prepared store: decoding once, memory-mapped reading, training on it, and damaged stores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from glowtorch.cli import main
from glowtorch.data import DataError, load_dataset, load_dataset_for
from glowtorch.data.store import open_store, prepare_store
from test_data import make_mnist, write_png


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for cls in ("cat", "dog"):
        for i in range(12):
            write_png(root / cls / f"{i:02d}.png", size=(14, 10))
    (root / "dog" / "broken.png").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def folder_store(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "images"
    prepare_store("folder", image_folder, out, image_size=8, workers=2)
    return out


def test_a_prepared_folder_holds_what_the_folder_loader_reads(image_folder, folder_store) -> None:
    manifest = json.loads((folder_store / "manifest.json").read_text())
    assert manifest["image_size"] == 8 and manifest["dataset"] == "folder"
    assert manifest["splits"]["train"]["skipped"] + manifest["splits"]["test"]["skipped"] == 1
    for train in (True, False):
        direct = load_dataset("folder", image_folder, train=train, image_size=8)
        stored = open_store(folder_store, train=train)
        assert torch.equal(stored.images, direct.images)
        assert torch.equal(stored.labels, direct.labels) and stored.class_names == ["cat", "dog"]
    assert np.load(folder_store / "train" / "images.npy", mmap_mode="r").shape == tuple(
        manifest["splits"]["train"]["shape"]
    )
    assert not list(folder_store.parent.glob("*.partial"))


def test_a_prepared_mnist_equals_the_loader(tmp_path) -> None:
    make_mnist(tmp_path / "mnist", n=30)
    prepare_store("mnist", tmp_path / "mnist", tmp_path / "store")
    for train in (True, False):
        stored, direct = open_store(tmp_path / "store", train), load_dataset("mnist", tmp_path / "mnist", train)
        assert torch.equal(stored.images, direct.images) and torch.equal(stored.labels, direct.labels)


def test_the_images_are_mapped_not_copied(folder_store, tmp_path) -> None:
    store = tmp_path / "copy"
    shutil.copytree(folder_store, store)
    data = open_store(store, train=True)
    first = int(data.images[0, 0, 0, 0])
    offset = np.load(store / "train" / "images.npy", mmap_mode="r").offset
    with open(store / "train" / "images.npy", "r+b") as f:  # change the file under the open dataset
        f.seek(offset)
        f.write(bytes([(first + 1) % 256]))
    assert int(data.images[0, 0, 0, 0]) == (first + 1) % 256


def test_preparing_again_keeps_a_complete_store_and_refuses_other_folders(image_folder, folder_store, tmp_path):
    before = (folder_store / "train" / "images.npy").stat().st_mtime_ns
    prepare_store("folder", image_folder, folder_store, image_size=8, workers=1)
    assert (folder_store / "train" / "images.npy").stat().st_mtime_ns == before
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="is not a prepared store"):
        prepare_store("folder", image_folder, tmp_path / "busy", image_size=8)


def test_an_interrupted_prepare_leaves_nothing_that_looks_like_a_store(image_folder, tmp_path, monkeypatch):
    """An interrupted prepare removes the folder it was writing (and only it): a user's own ``store.partial``
    folder beside the store, with a file in it, is left as it was."""
    import glowtorch.data.store

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    users = tmp_path / "store.partial"
    users.mkdir()
    (users / "mine.txt").write_text("keep")
    monkeypatch.setattr(glowtorch.data.store, "atomic_write", fail)  # dies just before the manifest
    with pytest.raises(KeyboardInterrupt):
        prepare_store("folder", image_folder, tmp_path / "store", image_size=8, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.partial"]
    with pytest.raises(DataError, match="not a prepared store"):
        open_store(tmp_path / "store")
    monkeypatch.undo()
    prepare_store("folder", image_folder, tmp_path / "store", image_size=8, workers=1)  # starts over
    assert open_store(tmp_path / "store").images.shape[1:] == (3, 8, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store", "store.partial"]
    assert (users / "mine.txt").read_text() == "keep"


def damaged(folder_store, tmp_path, name: str):
    store = tmp_path / name
    shutil.copytree(folder_store, store)
    return store


def test_damaged_stores_are_refused_naming_the_file(folder_store, tmp_path) -> None:
    truncated = damaged(folder_store, tmp_path, "truncated")
    images = truncated / "train" / "images.npy"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match=f"{images}.*(damaged|truncated)"):
        open_store(truncated)

    reshaped = damaged(folder_store, tmp_path, "reshaped")
    manifest = json.loads((reshaped / "manifest.json").read_text())
    manifest["splits"]["train"]["shape"][0] += 1
    (reshaped / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="images.npy holds uint8 .* but the manifest says"):
        open_store(reshaped)

    no_test = damaged(folder_store, tmp_path, "no-test")
    manifest = json.loads((no_test / "manifest.json").read_text())
    del manifest["splits"]["test"]
    (no_test / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="manifest.json has no test split"):
        open_store(no_test, train=False)

    labels = damaged(folder_store, tmp_path, "labels")
    np.save(labels / "train" / "labels.npy", np.zeros(3, np.int64))
    with pytest.raises(DataError, match="labels.npy holds"):
        open_store(labels)

    with pytest.raises(DataError, match="manifest.json: the store holds 8x8 images, not 16x16"):
        load_dataset_for((3, 16, 16), "prepared", folder_store)
    with pytest.raises(DataError, match="3-channel images, the model expects 1"):
        load_dataset_for((1, 8, 8), "prepared", folder_store)


def test_training_on_a_store_is_training_on_its_source(tmp_path, capsys) -> None:
    make_mnist(tmp_path / "mnist", n=40)
    assert (
        main(["prepare", "--dataset", "mnist", "--data-dir", str(tmp_path / "mnist"), "--out", str(tmp_path / "s")])
        == 0
    )
    assert "40 train / 40 test images" in capsys.readouterr().out
    tiny = ["--levels", "2", "--depth", "1", "--hidden-channels", "8", "--batch-size", "8", "--init-images", "16",
            "--steps", "4", "--eval-every", "2", "--no-progress", "--shift", "1", "--precision", "float32"]  # fmt: skip
    source = ["--dataset", "mnist", "--data-dir", str(tmp_path / "mnist")]
    prepared = ["--dataset", "prepared", "--data-dir", str(tmp_path / "s")]
    assert main(["train", *source, "--out", str(tmp_path / "a"), *tiny]) == 0
    assert main(["train", *prepared, "--out", str(tmp_path / "b"), *tiny]) == 0
    a = (tmp_path / "a" / "model" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "b"), *prepared, "--no-progress"]) == 0
    assert "bits/dim" in capsys.readouterr().out
    code = main(
        ["train", "--dataset", "prepared", "--data-dir", str(tmp_path / "mnist"), "--out", str(tmp_path / "c"), *tiny]
    )
    assert code == 1 and "not a prepared store" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_prepare_errors_are_one_line_and_leave_nothing(tmp_path, capsys) -> None:
    code = main(["prepare", "--dataset", "folder", "--out", str(tmp_path / "s")])
    assert code == 1 and "--data-dir is required to prepare folder" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    make_mnist(tmp_path / "mnist", n=12)
    code = main(
        ["prepare", "--dataset", "mnist", "--data-dir", str(tmp_path / "mnist"), "--out", str(tmp_path / "mine")]
    )
    err = capsys.readouterr().err
    assert code == 1 and "is not a prepared store" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "mnist"]
