"""Each loader on tiny files written here in its real format; preprocessing; bad files."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from glowtorch.data import (
    DataError,
    Dataset,
    load_dataset,
    random_flip,
    random_shift,
    read_celeba_attributes,
    resize_images,
)


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_mnist(directory, n=12, compress=True):
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        write_idx(directory / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress)
    return directory


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx(tmp_path, compress: bool) -> None:
    make_mnist(tmp_path, compress=compress)
    data = load_dataset("mnist", tmp_path, train=True)
    assert data.images.shape == (12, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [i % 10 for i in range(12)]
    assert data.num_classes == 10
    assert len(load_dataset("mnist", tmp_path, train=False)) == 12


def test_mnist_truncated_and_bad_magic(tmp_path) -> None:
    make_mnist(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", tmp_path)
    path.write_bytes(b"\x12\x34\x56\x78" + b"\x00" * 20)
    with pytest.raises(DataError, match="magic"):
        load_dataset("mnist", tmp_path)


def test_cifar10_batches(tmp_path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 9]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    train = load_dataset("cifar10", tmp_path)
    assert train.images.shape == (20, 3, 32, 32)
    assert train.labels.tolist()[:4] == [0, 1, 2, 9]
    first = pickle.load(open(folder / "data_batch_1", "rb"))[b"data"][0]
    assert torch.equal(train.images[0], torch.from_numpy(first.reshape(3, 32, 32)))
    (folder / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a CIFAR-10"):
        load_dataset("cifar10", folder, train=False)


def test_svhn_mat(tmp_path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [3], [4]], dtype=np.uint8)})
    data = load_dataset("svhn", tmp_path, train=False)
    assert data.images.shape == (5, 3, 32, 32)
    assert data.labels.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(data.images[1, 0], torch.from_numpy(x[:, :, 0, 1]))


def write_png(path, size=(12, 10), value=None, mode="RGB") -> None:
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    array = rng.integers(0, 256, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def test_image_folder_with_classes_and_junk(tmp_path, capsys) -> None:
    for cls in ("cat", "dog"):
        for i in range(10):
            write_png(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    train = load_dataset("folder", tmp_path, train=True, image_size=8)
    test = load_dataset("folder", tmp_path, train=False, image_size=8)
    assert train.images.shape[1:] == (3, 8, 8)
    assert len(train) + len(test) == 20
    assert train.class_names == ["cat", "dog"] and set(train.labels.tolist()) == {0, 1}
    assert "skipped 1" in capsys.readouterr().out


def test_image_folder_grayscale_and_empty(tmp_path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    write_png(tmp_path / "train" / "a.png", (8, 8), mode="L")
    write_png(tmp_path / "test" / "b.png", (8, 8), mode="L")
    data = load_dataset("folder", tmp_path, channels=1)
    assert data.images.shape == (1, 1, 8, 8) and data.labels is None
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no readable images"):
        load_dataset("folder", empty)


def test_celeba_layout(tmp_path) -> None:
    names = ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg", "000005.jpg"]
    for name in names:
        write_png(tmp_path / "img_align_celeba" / name, (40, 50))
    rows = "\n".join(f"{n} {' '.join('1' if (i + j) % 2 else '-1' for j in range(3))}" for i, n in enumerate(names))
    (tmp_path / "list_attr_celeba.txt").write_text(f"{len(names)}\nSmiling Male Young\n{rows}\n")
    data = load_dataset("celeba", tmp_path, train=True, image_size=16)
    assert data.images.shape == (4, 3, 16, 16)
    files, attributes, values = read_celeba_attributes(tmp_path / "list_attr_celeba.txt")
    assert attributes == ["Smiling", "Male", "Young"] and values.shape == (5, 3)
    assert values[0].tolist() == [False, True, False]
    with pytest.raises(DataError, match="img_align_celeba"):
        load_dataset("celeba", tmp_path / "img_align_celeba")


def test_digits_embedded() -> None:
    train, test = load_dataset("digits", train=True), load_dataset("digits", train=False)
    assert train.images.shape == (1500, 1, 8, 8) and len(test) == 297
    assert train.images.max() == 255 and train.num_classes == 10


def test_unknown_dataset_and_missing_dir(tmp_path) -> None:
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nope")


def test_missing_files_offline_names_them(tmp_path, monkeypatch) -> None:
    import urllib.request

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path)
    assert not any(tmp_path.iterdir()), "no partial file left behind"


def test_download_checksum_mismatch_is_not_used(tmp_path, monkeypatch) -> None:
    import io
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"not the real file"))
    with pytest.raises(DataError, match="checksum"):
        load_dataset("svhn", tmp_path, train=False)
    assert not any(tmp_path.iterdir())


def test_resize_and_flip() -> None:
    images = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).view(2, 3, 6, 8).to(torch.uint8)
    assert resize_images(images, 4).shape == (2, 3, 4, 4)
    constant = torch.full((1, 1, 10, 10), 77, dtype=torch.uint8)
    assert torch.equal(resize_images(constant, 5), torch.full((1, 1, 5, 5), 77, dtype=torch.uint8))
    flipped = random_flip(images.repeat(20, 1, 1, 1), torch.Generator().manual_seed(0))
    n_flipped = sum(torch.equal(f, images[i % 2].flip(2)) for i, f in enumerate(flipped))
    assert 5 < n_flipped < 35


def _translated(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` (C, H, W) with its content moved down by dy and right by dx, zeros moved in."""
    out = torch.zeros_like(image)
    height, width = image.shape[-2:]
    out[:, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = image[
        :, max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


def test_random_shift_translates_each_image_by_its_own_offset() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (200, 2, 7, 6), generator=generator, dtype=torch.uint8)
    shifted = random_shift(images, 2, torch.Generator().manual_seed(1))
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    offsets = set()
    for image, out in zip(images, shifted, strict=True):
        candidates = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
        matches = [(dy, dx) for dy, dx in candidates if torch.equal(out, _translated(image, dy, dx))]
        assert len(matches) == 1, "every output is exactly one translation of its own input"
        offsets.add(matches[0])
    assert len(offsets) == 25, "all offsets in [-2, 2]^2 occur"
    assert torch.equal(random_shift(images, 0), images)
    again = random_shift(images, 2, torch.Generator().manual_seed(1))
    assert torch.equal(again, shifted), "the generator fixes the offsets"


def test_dataset_validation() -> None:
    with pytest.raises(DataError, match="empty"):
        Dataset(torch.zeros(0, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(DataError, match="uint8"):
        Dataset(torch.zeros(2, 1, 4, 4))


def test_perturbed_batches_replace_the_asked_share_of_pixels_the_same_on_any_process_count() -> None:
    """``TrainConfig.perturb``: each pixel replaced by a random value with that probability, drawn for the
    global batch, so two processes' shares are a single process's rows; 0 leaves the batch as it was."""
    from glowtorch.distributed import Distributed
    from glowtorch.preprocess import to_uint8
    from glowtorch.train import BatchSource, TrainConfig

    data = load_dataset("digits")
    config = TrainConfig(batch_size=32, steps=1)

    def batch(perturb: float, rank: int = 0, world: int = 1):
        source = BatchSource(data, dataclasses.replace(config, perturb=perturb), 8, False,
                             Distributed(rank=rank, world_size=world), torch.device("cpu"))  # fmt: skip
        x, _, indices, _, _ = source(5)
        return to_uint8(x, 8), indices

    plain, indices = batch(0.0)
    assert torch.equal(plain, data.images[indices])
    perturbed, _ = batch(0.3)
    changed = (perturbed != plain).float().mean().item()
    assert 0.25 < changed < 0.32  # 0.3, less the 1/256 chance of drawing the pixel's own value
    halves = torch.cat([batch(0.3, rank, 2)[0] for rank in (0, 1)])
    assert torch.equal(halves, perturbed)
