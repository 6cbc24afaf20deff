"""Hostile and careless input, through the command line in-process: damaged and hand-made files of every
kind glowtorch reads, absurd sizes, environment variables, paths that would overwrite an input. Every case
ends in exactly one line ``glowtorch: error: ...`` and a non-zero exit, never in the last-resort handler
(``internal error``) or a traceback, and leaves every file that was there before byte for byte as it was
(the snapshot covers the whole test folder; a case's own output may only be absent)."""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import randomize
from glowtorch import Glow, GlowConfig, save_model
from glowtorch.cli import main
from glowtorch.data.sources import CifarUnpickler

Y0AST_FIXTURE = "y0ast_additive_invconv_gray"
CONFIG = dict(image_shape=[1, 8, 8], levels=2, depth=1, hidden_channels=8)


def tiny_model(folder: Path, **overrides) -> Path:
    torch.manual_seed(0)
    save_model(randomize(Glow(GlowConfig(**{**CONFIG, **overrides}))).float(), folder)
    return folder


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: a file's bytes, a link's target, a FIFO or folder by kind."""
    entries: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            entries[key] = "link:" + os.readlink(path)
        elif path.is_fifo():
            entries[key] = "fifo"
        elif path.is_dir():
            entries[key] = "dir"
        else:
            entries[key] = path.read_bytes()
    return entries


def edit_config(model: Path, change: Callable[[dict], object]) -> None:
    path = model / "config.json"
    values = json.loads(path.read_text())
    result = change(values)
    path.write_text(json.dumps(values if result is None else result))


def edit_weights(model: Path, change: Callable[[dict], dict]) -> None:
    path = model / "model.safetensors"
    save_file(change(load_file(str(path))), str(path))


def sample(model: Path, *extra) -> list:
    return ["sample", model, "--n", "2", "-o", "out.png", "--precision", "float32", *extra]


def gray_png(path: Path, size: int = 8, value: int = 100) -> Path:
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- case builders: (tmp, model) -> argv
def config_case(change, expect: str):
    def build(tmp: Path, model: Path) -> list:
        edit_config(model, change)
        return sample(model)

    return build, expect


def weights_case(change, expect: str):
    def build(tmp: Path, model: Path) -> list:
        edit_weights(model, change)
        return sample(model)

    return build, expect


def nan_first(state: dict) -> dict:
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key] = state[key].clone()
    state[key][0] = float("nan")
    return state


def cifar_folder(tmp: Path, payload) -> Path:
    folder = tmp / "cifar"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(payload if isinstance(payload, bytes) else pickle.dumps(payload))
    return folder


def cifar_case(payload, expect: str):
    def build(tmp: Path, model: Path) -> list:
        return ["evaluate", model, "--dataset", "cifar10", "--data-dir", cifar_folder(tmp, payload(tmp))]

    return build, expect


class RunsCode:
    """A pickle that runs ``touch MARKER`` when loaded by a plain unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def resume_case(change, expect: str):
    def build(tmp: Path, model: Path) -> list:
        from test_cli import TINY

        run = tmp / "run"
        assert main(["train", "--dataset", "digits", "--steps", "3", "--out", str(run), *TINY]) == 0
        for path in (run / "checkpoints").glob("step_*.pt"):
            state = torch.load(path, weights_only=True)
            torch.save(change(state), path)
        return ["train", "--dataset", "digits", "--steps", "6", "--out", run, "--resume", *TINY]

    return build, expect


def env_case(variables: dict, expect: str):
    def build(tmp: Path, model: Path) -> list:
        for name, value in variables.items():
            os.environ[name] = value
        from test_cli import TINY

        return ["train", "--dataset", "digits", "--steps", "1", "--out", tmp / "run", *TINY]

    return build, expect


def y0ast_case(change, expect: str):
    def build(tmp: Path, model: Path) -> list:
        from glowtorch.convert import load_port_checkpoint

        state = load_port_checkpoint(Path(__file__).parent / "fixtures" / "convert" / f"{Y0AST_FIXTURE}.pt")
        path = tmp / "y0ast.pt"
        torch.save(change(state), path)
        return ["convert", "y0ast", path, "--out", tmp / "converted"]

    return build, expect


def image_case(make, expect: str, command: str = "encode"):
    def build(tmp: Path, model: Path) -> list:
        path = make(tmp)
        return [command, model, path, "-o", tmp / "latents.safetensors"]

    return build, expect


def fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.png")
    return tmp / "pipe.png"


def float_tiff(tmp: Path) -> Path:
    Image.fromarray(np.linspace(-3, 300, 64, dtype=np.float32).reshape(8, 8)).save(tmp / "f.tif")
    return tmp / "f.tif"


def text_png(tmp: Path) -> Path:
    (tmp / "notes.png").write_text("not an image")
    return tmp / "notes.png"


def drop_one(state: dict) -> dict:
    return {k: v for i, (k, v) in enumerate(state.items()) if i != 3}


def metrics_case(text: str):
    def build(tmp: Path, model: Path) -> list:
        run = tmp / "run"
        run.mkdir()
        (run / "metrics.jsonl").write_text(text)
        return ["plot", run, "-o", tmp / "plot.png"]

    return build, "metrics"


def directions_case(tensors: dict, expect: str):
    def build(tmp: Path, model: Path) -> list:
        path = tmp / "directions.safetensors"
        save_file(tensors, str(path))
        return ["manipulate", model, gray_png(tmp / "in.png"), "--direction", path, "--attribute", "3", "-o",
                tmp / "m.png"]  # fmt: skip

    return build, expect


def claimed_directions_case(level: Callable[[tuple], torch.Tensor], expect: str):
    """A directions file that claims the test model (its fingerprint) with ``level(shape)`` at each level."""

    def build(tmp: Path, model: Path) -> list:
        from glowtorch import load_model
        from glowtorch.latent_files import model_fingerprint, save_latents

        glow = load_model(model)
        metadata = {"glowtorch": "directions", "model_fingerprint": model_fingerprint(glow), "attributes": '["3"]'}
        save_latents(tmp / "d.safetensors", {f"z{i}": level((1, *s)) for i, s in enumerate(glow.latent_shapes)},
                     metadata)  # fmt: skip
        return ["manipulate", model, gray_png(tmp / "in.png"), "--direction", tmp / "d.safetensors", "--attribute",
                "3", "-o", tmp / "m.png"]  # fmt: skip

    return build, expect


def scores_case(tensors: dict, expect: str):
    """``glowtorch demo`` on a model folder whose test-scores file holds ``tensors``."""

    def build(tmp: Path, model: Path) -> list:
        pytest.importorskip("gradio", reason="the demo needs Gradio")
        folder = tiny_model(tmp / "scored")
        save_file(tensors, str(folder / "test_scores.safetensors"))
        save_file({"z0": torch.zeros(1)}, str(folder / "directions.safetensors"))
        return ["demo", folder, "--superres", "none"]

    return build, expect


CASES: dict[str, tuple[Callable[[Path, Path], list], str]] = {
    # config.json written by someone else
    "config is a list": config_case(lambda v: [v], "JSON object"),
    "config is a string": config_case(lambda v: "glow", "JSON object"),
    "learn_top is a string": config_case(lambda v: v.update(learn_top="no"), "learn_top must be true or false"),
    "levels is a float": config_case(lambda v: v.update(levels=2.0), "levels must be an integer"),
    "levels is a string": config_case(lambda v: v.update(levels="2"), "levels must be an integer"),
    "levels is true": config_case(lambda v: v.update(levels=True), "levels must be an integer"),
    "levels 100000": config_case(lambda v: v.update(levels=100000), "use fewer levels"),
    "levels 0": config_case(lambda v: v.update(levels=0), "levels must be >= 1"),
    "condition is a number": config_case(lambda v: v.update(condition=5), "condition must be a string"),
    "condition malformed": config_case(lambda v: v.update(condition="lowres:x"), "lowres"),
    "n_bits 4.5": config_case(lambda v: v.update(n_bits=4.5), "n_bits must be an integer"),
    "n_bits 9": config_case(lambda v: v.update(n_bits=9), "n_bits must be between 1 and 8"),
    "image_shape of floats": config_case(lambda v: v.update(image_shape=[1.5, 8, 8]), "image_shape"),
    "image_shape of two sizes": config_case(lambda v: v.update(image_shape=[8, 8]), "image_shape"),
    "image_shape a number": config_case(lambda v: v.update(image_shape=8), "image_shape"),
    "width 10**7": config_case(lambda v: v.update(hidden_channels=10**7), "memory"),
    "depth 10**7": config_case(lambda v: v.update(depth=10**7), "steps of flow"),
    "unknown field": config_case(lambda v: v.update(colour="red"), "unknown GlowConfig fields: colour"),
    "coupling a list": config_case(lambda v: v.update(coupling=["affine"]), "coupling must be a string"),
    "coupling unknown": config_case(lambda v: v.update(coupling="cubic"), "coupling must be one of"),
    "zero padding infinite": config_case(lambda v: v.update(zero_conv_padding=float("inf")), "zero_conv_padding"),
    "num_classes negative": config_case(lambda v: v.update(num_classes=-1), "num_classes"),
    # model.safetensors
    "NaN weights": weights_case(nan_first, "non-finite weights"),
    "integer weights": weights_case(lambda s: {k: v.long() for k, v in s.items()}, "torch.int64"),
    "float64 weights": weights_case(lambda s: {k: v.double() for k, v in s.items()}, "torch.float64"),
    "a tensor missing": weights_case(drop_one, "1 missing"),
    "a tensor mis-shaped": weights_case(lambda s: {k: v.reshape(-1) for k, v in s.items()}, "mis-shaped"),
    # command-line values
    "--n 1e8": (lambda tmp, model: sample(model)[:2] + ["--n", "100000000"], "--n"),
    "--columns 1e9": (lambda tmp, model: sample(model, "--columns", "1000000000"), "--columns"),
    "--scale 1e5": (lambda tmp, model: sample(model, "--scale", "100000"), "--scale"),
    "--temperature 1e308": (lambda tmp, model: sample(model, "--temperature", "1e308"), "--temperature"),
    "--temperature nan": (lambda tmp, model: sample(model, "--temperature", "nan"), "--temperature"),
    "--seed 2**70": (lambda tmp, model: sample(model, "--seed", str(2**70)), "--seed"),
    "--seed -1": (lambda tmp, model: sample(model, "--seed", "-1"), "--seed"),
    "--device foo": (lambda tmp, model: sample(model, "--device", "foo"), "unknown device 'foo'"),
    "--device cuda:99": (lambda tmp, model: sample(model, "--device", "cuda:99"), "cuda:99"),
    "--steps 1e8": (lambda tmp, model: ["interpolate", model, "a.png", "b.png", "--steps", "100000000"], "--steps"),
    "--draws 1e9": (lambda tmp, model: ["evaluate", model, "--dataset", "digits", "--draws", "10**9"], "--draws"),
    "--image-size 1e5": (lambda tmp, model: ["train", "--dataset", "digits", "--image-size", "100000"], "--image-size"),
    "--port 70000": (lambda tmp, model: ["demo", model, "--port", "70000"], "--port"),
    "--auth without a colon": (lambda tmp, model: ["demo", model, "--auth", "ann"], "USER:PASSWORD"),
    "--auth without a user": (lambda tmp, model: ["demo", model, "--auth", ":pw"], "USER:PASSWORD"),
    "--auth without a password": (lambda tmp, model: ["demo", model, "--auth", "ann:"], "USER:PASSWORD"),
    "GLOWTORCH_DEMO_AUTH without a colon": (
        lambda tmp, model: os.environ.update(GLOWTORCH_DEMO_AUTH="ann") or ["demo", model],
        "GLOWTORCH_DEMO_AUTH must be USER:PASSWORD",
    ),
    "model folder missing": (lambda tmp, model: sample(tmp / "nowhere"), "not found"),
    "unknown pretrained name": (lambda tmp, model: sample("pretrained:nope"), "pretrained"),
    # image files
    "a FIFO as an image": image_case(fifo, "not a regular file"),
    "a folder as an image": image_case(lambda tmp: tmp, "not a regular file"),
    "text named .png": image_case(text_png, "not a readable image"),
    "float image outside 0..1": image_case(float_tiff, "floating-point"),
    "image of another size": image_case(lambda tmp: gray_png(tmp / "big.png", size=9), "9x9"),
    "colour image for a grey model": image_case(
        lambda tmp: Image.new("RGB", (8, 8)).save(tmp / "c.png") or tmp / "c.png", "colour image"
    ),
    "encode onto its input": (
        lambda tmp, model: ["encode", model, gray_png(tmp / "in.png"), "-o", tmp / "in.png"],
        "one of the inputs",
    ),
    "decode a damaged latent file": (
        lambda tmp, model: [(tmp / "z.safetensors").write_bytes(b"\x00" * 20), "decode", tmp / "z.safetensors"][1:],
        "z.safetensors",
    ),
    # data folders
    "CIFAR batch that runs code": cifar_case(lambda tmp: {b"data": RunsCode(tmp / "pwned")}, "refusing posix.system"),
    "CIFAR batch of the wrong shape": cifar_case(
        lambda tmp: {b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, "not a CIFAR-10 python batch"
    ),
    "CIFAR batch with labels past 9": cifar_case(
        lambda tmp: {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, "classes 0 to 9"
    ),
    "CIFAR batch of garbage": cifar_case(lambda tmp: b"\x80\x05junk", "not a CIFAR-10 python batch"),
    "MNIST with a bad magic number": (
        lambda tmp, model: [
            [
                (tmp / f"{p}-{k}-idx{d}-ubyte").write_bytes(struct.pack(">HBB", 1, 8, 1) + b"\x00" * 8)
                for p in ("train", "t10k")
                for k, d in (("images", 3), ("labels", 1))
            ],  # fmt: skip
            "evaluate",
            model,
            "--dataset",
            "mnist",
            "--data-dir",
            tmp,
        ][1:],
        "IDX",
    ),
    # training states
    "resume: state without its model": resume_case(
        lambda s: {k: v for k, v in s.items() if k != "model"}, "no 'model'"
    ),
    "resume: step a string": resume_case(lambda s: {**s, "step": "3"}, "'step' is a str"),
    "resume: state a list": resume_case(lambda s: [s], "not a glowtorch training state"),
    "resume: rng without torch": resume_case(lambda s: {**s, "rng": {}}, "no rng 'torch'"),
    "resume: weights of another shape": resume_case(
        lambda s: {**s, "model": {k: v.reshape(-1) for k, v in s["model"].items()}}, "does not fit this run"
    ),
    # environment
    "WORLD_SIZE without RANK": env_case({"WORLD_SIZE": "2"}, "RANK is not"),
    "WORLD_SIZE not a number": env_case({"WORLD_SIZE": "two"}, "WORLD_SIZE"),
    "RANK past WORLD_SIZE": env_case({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5"),
    "GLOWTORCH_DIST_TIMEOUT=inf": env_case(
        {"WORLD_SIZE": "2", "RANK": "0", "GLOWTORCH_DIST_TIMEOUT": "inf"}, "GLOWTORCH_DIST_TIMEOUT"
    ),  # fmt: skip
    # other ports' checkpoints
    "y0ast: a key missing": y0ast_case(lambda s: {k: v for k, v in s.items() if "prior_h" not in k}, "y0ast"),
    "y0ast: 1-d ActNorm": y0ast_case(
        lambda s: {k: (v.reshape(-1) if "actnorm" in k else v) for k, v in s.items()}, "not a 4-d tensor"
    ),
    "y0ast: width 10**7": y0ast_case(
        lambda s: {**s, "flow.layers.1.block.0.conv.weight": torch.zeros(1).expand(10**7, 2, 3, 3)}, "memory"
    ),
    "rosinality: not a checkpoint": (
        lambda tmp, model: [
            (tmp / "r.pt").write_bytes(b"junk"),
            "convert",
            "rosinality",
            tmp / "r.pt",
            "--image-size",
            "8",
            "--n-bits",
            "5",
            "--out",
            tmp / "r",
        ][1:],  # fmt: skip
        "r.pt",
    ),
    # metrics.jsonl and directions files
    "plot: metrics lines are lists": metrics_case("[1, 2]\n[3]\n"),
    "plot: metrics steps are strings": metrics_case('{"step": "a", "test_bpd": "b"}\n'),
    "plot: metrics not JSON": metrics_case("{not json\n"),
    "directions without attributes": directions_case({"mean": torch.zeros(3)}, "directions"),
    "demo test scores without examples": scores_case(
        {"bits_per_dim": torch.ones(4)}, "needs bits_per_dim and examples"
    ),
    "demo test scores of NaN": scores_case(
        {"bits_per_dim": torch.tensor([1.0, float("nan")]), "examples": torch.zeros(1, 1, 8, 8, dtype=torch.uint8)},
        "not NaN",
    ),
    "demo examples of another shape": scores_case(
        {"bits_per_dim": torch.ones(2), "examples": torch.zeros(1, 3, 8, 8, dtype=torch.uint8)}, "examples must be"
    ),
    "directions of NaN": claimed_directions_case(lambda s: torch.full(s, float("nan")), "not finite numbers"),
    "directions of the wrong shape": claimed_directions_case(lambda s: torch.zeros(2, *s), "where this model needs"),
}


@pytest.fixture
def model(tmp_path) -> Path:
    return tiny_model(tmp_path / "model")


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_line_and_changes_nothing(case, model, tmp_path, capsys, monkeypatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "GLOWTORCH_DIST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    build, expect = CASES[case]
    if case == "--device cuda:99" and torch.cuda.device_count() > 99:
        pytest.skip("this machine has 100 GPUs")
    saved = dict(os.environ)
    try:
        argv = [str(a) for a in build(tmp_path, model)]
        before = snapshot(tmp_path)
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's one-line error
            code = exit_.code
    finally:
        os.environ.clear()
        os.environ.update(saved)
    _, err = capsys.readouterr()
    assert code not in (0, None), f"{case}: exit 0"
    assert err.count("\n") == 1 and err.startswith("glowtorch: error: "), f"{case}: {err!r}"
    assert "internal error" not in err and "Traceback" not in err
    assert expect.lower() in err.lower(), f"{case}: {err!r}"
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, f"{case}: a file changed"
    assert not (tmp_path / "pwned").exists()


def test_there_are_at_least_sixty_cases() -> None:
    assert len(CASES) >= 60


def test_the_cifar_reader_refuses_every_other_global() -> None:
    """Only NumPy's array rebuilders pass ``find_class``; builtins, os, subprocess and NumPy's other
    functions do not."""
    import io

    reader = CifarUnpickler(io.BytesIO(b""))
    for module, name in [("builtins", "eval"), ("os", "system"), ("subprocess", "Popen"), ("numpy", "load"),
                         ("numpy.core.multiarray", "scalar"), ("torch", "load")]:  # fmt: skip
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            reader.find_class(module, name)
    assert reader.find_class("numpy", "ndarray") is np.ndarray


# --------------------------------------------------------------------------- not errors: right results, nothing harmed
def test_a_sixteen_bit_png_is_scaled_not_clipped(tmp_path) -> None:
    """A 0..65535 ramp reads as the 0..255 ramp it shows (rounded), not 99% white."""
    from glowtorch.data import read_image_files

    ramp = (np.arange(64, dtype=np.float64).reshape(8, 8) * (65535 / 63)).round().astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").mode.startswith("I;16")
    read = read_image_files([tmp_path / "ramp.png"], (1, 8, 8))[0, 0].numpy().astype(np.int64)
    assert (read == np.floor(ramp * (255 / 65535) + 0.5)).all()
    assert read.min() == 0 and read.max() == 255 and abs(read.mean() - 127.5) < 1
    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    read = read_image_files([tmp_path / "unit.tif"], (1, 8, 8))[0, 0].numpy().astype(np.int64)
    assert (read == np.floor(unit.astype(np.float64) * 255 + 0.5)).all()


def test_planted_links_at_old_temporary_names_are_not_followed(tmp_path) -> None:
    """Links planted where earlier versions put their temporaries (``.out.png.tmp<pid>``,
    ``.glowtorch-write-test-<pid>``) point at a file of the user's: writing beside them changes neither the
    file nor its mode, and the new output's temporary is a file of glowtorch's own."""
    from glowtorch.files import ensure_writable_dir
    from glowtorch.images import save_grid

    secret = tmp_path / "secret.txt"
    secret.write_text("mine")
    secret.chmod(0o600)
    out = tmp_path / "out"
    out.mkdir()
    for name in (f".grid.png.tmp{os.getpid()}", f".glowtorch-write-test-{os.getpid()}"):
        (out / name).symlink_to(secret)
    ensure_writable_dir(out)
    save_grid(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), out / "grid.png", columns=2)
    assert secret.read_text() == "mine" and (secret.stat().st_mode & 0o777) == 0o600
    assert Image.open(out / "grid.png").size == (22, 22)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".grid.png.tmp" + str(os.getpid()), f".glowtorch-write-test-{os.getpid()}", "grid.png"]
    )


def test_lowres_never_replaces_its_input_or_one_output_with_another(tmp_path, capsys) -> None:
    model = tiny_model(tmp_path / "sr", condition="lowres:2")
    photos = tmp_path / "photos"
    photos.mkdir()
    digit = gray_png(photos / "digit.png")
    other = tmp_path / "other"
    other.mkdir()
    twin = gray_png(other / "digit.png", value=7)
    before = snapshot(tmp_path)
    for argv in (["lowres", model, digit, "-o", photos], ["lowres", model, digit, twin, "-o", tmp_path / "out"]):
        assert main([str(a) for a in argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("glowtorch: error: ")
        assert "one of the inputs" in err or "named 'digit'" in err
        assert snapshot(tmp_path) == before
    assert main(["lowres", str(model), str(digit), "-o", str(tmp_path / "small")]) == 0
    assert Image.open(tmp_path / "small" / "digit.png").size == (4, 4)


def test_resume_names_damaged_checkpoints_and_never_prunes_the_good_one(tmp_path, capsys) -> None:
    """The newest checkpoints damaged: the run resumes from the readable one, says which files it skipped,
    and keeps that checkpoint while damaged ones of later steps remain."""
    from glowtorch.checkpoint import checkpoint_paths, checkpoint_step
    from test_cli import TINY

    run = tmp_path / "run"
    flags = ["--dataset", "digits", "--out", str(run), *TINY, "--keep-checkpoints", "3"]
    assert main(["train", "--steps", "9", *flags]) == 0
    paths = checkpoint_paths(run)
    assert [checkpoint_step(p) for p in paths] == [3, 6, 9]
    paths[1].write_bytes(b"damaged")
    paths[2].write_bytes(b"damaged")
    (run / "checkpoints" / "step_00000012.pt").write_bytes(b"damaged")
    capsys.readouterr()
    assert main(["train", "--steps", "6", "--resume", *flags]) == 0
    out = capsys.readouterr().out
    assert "skipped unreadable training states" in out and "step_00000009.pt" in out and "step_00000003.pt" in out
    assert "from step 3" in out
    steps = [checkpoint_step(p) for p in checkpoint_paths(run)]
    assert 3 in steps and 6 in steps and 12 in steps  # the good one kept, the rewritten one, the damaged later one


def test_a_run_stopped_before_its_first_checkpoint_can_be_resumed(tmp_path, capsys) -> None:
    from test_cli import TINY

    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text("{}")  # what a run that died during initialization leaves
    flags = ["--dataset", "digits", "--steps", "3", "--out", str(run), *TINY]
    assert main(["train", *flags]) == 1
    assert "already holds a training run" in capsys.readouterr().err
    assert main(["train", *flags, "--resume"]) == 0
    assert "starting it again" in capsys.readouterr().out
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [3]
    for path in (run / "checkpoints").iterdir():  # a model without checkpoints: kept, and said how to go on
        path.unlink()
    before = snapshot(run)
    assert main(["train", *flags, "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a model but no checkpoint" in err and "another --out" in err
    assert snapshot(run) == before


def test_the_last_resort_handler_is_one_line_and_debug_re_raises(monkeypatch, capsys) -> None:
    """A bug (an exception no check foresaw) is one line marked internal, exit 70; GLOWTORCH_DEBUG=1 re-raises."""
    from glowtorch.cli import INTERNAL_ERROR, build_parser

    def bug(args):
        raise ZeroDivisionError("a bug")

    args = build_parser().parse_args(["presets"])
    monkeypatch.setattr("glowtorch.cli.build_parser", lambda: _Returning(args, bug))
    assert main(["presets"]) == INTERNAL_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: ZeroDivisionError: a bug" in err and "GLOWTORCH_DEBUG=1" in err
    monkeypatch.setenv("GLOWTORCH_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["presets"])


class _Returning:
    """A parser whose parse_args returns ``args`` with ``func`` replaced."""

    def __init__(self, args, func) -> None:
        self.args, self.func = args, func

    def parse_args(self, argv):
        self.args.func = self.func
        return self.args


def test_a_grid_too_large_is_refused_before_it_is_drawn(tmp_path) -> None:
    """``save_grid`` from the API (no argparse bound on ``scale``): more than 2^28 pixels is one ValueError and
    no file; the bound counts padding and the clamped column count."""
    from glowtorch.images import MAX_GRID_PIXELS, save_grid

    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    side = 2 * (8 + 2) + 2  # two columns however many are asked for
    scale = int((MAX_GRID_PIXELS / (side * 12)) ** 0.5) + 1
    with pytest.raises(ValueError, match="PNG grid would have"):
        save_grid(images, tmp_path / "big.png", columns=1000, scale=scale)
    assert not any(tmp_path.iterdir())
    assert side * 12 * (scale - 1) ** 2 <= MAX_GRID_PIXELS  # the scale just under the bound would pass
    save_grid(images, tmp_path / "ok.png", columns=1000, scale=3)
    assert Image.open(tmp_path / "ok.png").size == (side * 3, 12 * 3)
