"""glowtorch convert: converted checkpoints compute what the ports' own code computed (fixtures made by
experiments/port_fixtures.py with the ports' code; the ports are not needed here)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from glowtorch import load_model
from glowtorch.cli import main
from glowtorch.convert import ConversionError, from_rosinality, from_y0ast, load_port_checkpoint
from glowtorch.latent import decode_images, encode_images

FIXTURES = Path(__file__).parent / "fixtures" / "convert"
ROSINALITY = json.loads((FIXTURES / "rosinality.json").read_text())
Y0AST = json.loads((FIXTURES / "y0ast.json").read_text())


def converted_y0ast(name: str, with_hparams: bool = True):
    hparams = json.loads((FIXTURES / f"{name}_hparams.json").read_text()) if with_hparams else None
    model = from_y0ast(load_port_checkpoint(FIXTURES / f"{name}.pt"), hparams)
    return model, torch.load(FIXTURES / f"{name}_expected.pt", weights_only=True)


@pytest.mark.parametrize("name", sorted(Y0AST))
def test_y0ast_models_give_the_ports_log_likelihood_decoding_and_class_logits(name: str) -> None:
    info = Y0AST[name]
    model, expected = converted_y0ast(name)
    config = model.config
    assert (config.levels, config.depth, config.hidden_channels, config.num_classes) == (
        info["levels"], info["depth"], info["width"], info["classes"])  # fmt: skip
    assert config.permutation == ("lu" if info["lu"] else info["permutation"]) and config.learn_top == info["learn_top"]
    x, y = expected["x"], expected["y"] if info["classes"] else None
    with torch.no_grad():
        log_p = model.log_prob(x, y).double()
        error = (log_p - expected["log_likelihood"]).abs() / (x[0].numel() * math.log(2.0))
        assert error.max() < 1e-4, error
        # the port's flow.decode of the inputs' top latents, every split at its prior mean
        decoded = model.decode_levels(model.layout(expected["top_latent"]), lambda lv, h: model.splits[lv].prior(h)[0])
        theirs = expected["decoded_at_t0"]
        scale = theirs.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
        assert_close(decoded / scale, theirs / scale, atol=1e-4, rtol=0)
        if info["classes"]:
            zs, _ = model.encode(x, y)
            assert_close(model.classifier_logits(zs[-1]), expected["class_logits"], atol=1e-5, rtol=1e-5)
    images = torch.randint(0, 256, (4, *config.image_shape), generator=torch.Generator().manual_seed(0)).byte()
    labels = torch.arange(4) % info["classes"] if info["classes"] else None
    assert torch.equal(decode_images(model, encode_images(model, images, labels), labels), images)


def test_y0ast_needs_its_hparams_only_where_the_tensors_do_not_say(tmp_path, capsys) -> None:
    converted_y0ast("y0ast_affine_lu_rgb_conditional", with_hparams=False)  # 1x1 convolutions: no hparams
    with pytest.raises(ConversionError, match="pass the run's hparams.json"):
        converted_y0ast("y0ast_affine_reverse_gray", with_hparams=False)
    name = "y0ast_affine_reverse_gray"
    shuffled = {**json.loads((FIXTURES / f"{name}_hparams.json").read_text()), "flow_permutation": "shuffle"}
    (tmp_path / "hparams.json").write_text(json.dumps(shuffled))
    code = main(["convert", "y0ast", str(FIXTURES / f"{name}.pt"), "--hparams", str(tmp_path / "hparams.json"),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "a shuffle model cannot be converted" in err and err.count("\n") == 1
    code = main(["convert", "y0ast", str(FIXTURES / f"{name}.pt"), "--hparams", str(FIXTURES / f"{name}_hparams.json"),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0 and load_model(tmp_path / "out").config.permutation == "reverse"
    assert main(["convert", "rosinality", str(FIXTURES / "rosinality_affine_lu_gray.pt"), "--out",
                 str(tmp_path / "r")]) == 1  # fmt: skip
    assert "pass --image-size and --n-bits" in capsys.readouterr().err


def converted(name: str):
    info = ROSINALITY[name]
    model = from_rosinality(load_port_checkpoint(FIXTURES / f"{name}.pt"), info["image_size"], info["n_bits"])
    return model, torch.load(FIXTURES / f"{name}_expected.pt", weights_only=True)


@pytest.mark.parametrize("name", sorted(ROSINALITY))
def test_rosinality_models_give_the_ports_log_likelihood(name: str) -> None:
    model, expected = converted(name)
    info = ROSINALITY[name]
    assert model.config.coupling == ("affine" if info["affine"] else "additive")
    assert model.config.permutation == ("lu" if info["lu"] else "invconv")
    assert (model.config.levels, model.config.depth, model.config.hidden_channels) == (
        info["levels"], info["depth"], info["width"])  # fmt: skip
    x = expected["x"]
    with torch.no_grad():
        log_p = model.log_prob(x).double()
    dims = x[0].numel()
    bits_per_dim_error = (log_p - expected["log_likelihood"]).abs() / (dims * math.log(2.0))
    assert bits_per_dim_error.max() < 1e-4, bits_per_dim_error


@pytest.mark.parametrize("name", sorted(ROSINALITY))
def test_rosinality_models_sample_what_the_port_samples_and_round_trip(name: str) -> None:
    model, expected = converted(name)
    noise = [expected[f"noise{i}"] for i in range(len(model.latent_shapes))]
    with torch.no_grad():
        _, samples = model.sample_from_noise(noise, [1.0] * len(noise), None)
    theirs = expected["samples"]
    scale = theirs.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)  # a perturbed flow's samples can be huge
    assert_close(samples / scale, theirs / scale, atol=1e-4, rtol=0)
    levels = 2**model.config.n_bits  # pixel values the model's bits can hold: multiples of 2**(8 - n_bits)
    images = torch.randint(0, levels, (4, *model.config.image_shape), generator=torch.Generator().manual_seed(0))
    images = (images * (256 // levels)).byte()
    assert torch.equal(decode_images(model, encode_images(model, images)), images)


def test_the_command_writes_a_model_folder_every_command_takes(tmp_path, capsys) -> None:
    name = "rosinality_affine_lu_gray"
    out = tmp_path / "converted"
    code = main(["convert", "rosinality", str(FIXTURES / f"{name}.pt"), "--out", str(out), "--image-size", "8",
                 "--n-bits", "5"])  # fmt: skip
    assert code == 0 and "L=2 K=2 width=16 affine lu" in capsys.readouterr().out
    model, expected = load_model(out), converted(name)[1]
    with torch.no_grad():
        assert_close(model.log_prob(expected["x"]).double(), expected["log_likelihood"], atol=1e-3, rtol=0)
    assert main(["sample", str(out), "--n", "4", "-o", str(tmp_path / "s.png"), "--precision", "float32"]) == 0


def test_bad_checkpoints_are_refused_in_one_line(tmp_path, capsys) -> None:
    state = load_port_checkpoint(FIXTURES / "rosinality_affine_lu_gray.pt")

    def refused(bad: dict) -> str:
        path = tmp_path / "bad.pt"
        torch.save(bad, path)
        code = main(["convert", "rosinality", str(path), "--out", str(tmp_path / "out"), "--image-size", "8",
                     "--n-bits", "5"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and not (tmp_path / "out").exists()
        return err

    assert "keys this converter does not know: extra.weight" in refused({**state, "extra.weight": torch.zeros(1)})
    missing = {k: v for k, v in state.items() if not k.endswith("flows.1.coupling.net.2.bias")}
    assert "blocks.0.flows.1.coupling.net.2.bias is missing" in refused(missing)
    negative = dict(state)
    negative["blocks.0.flows.0.actnorm.scale"] = -negative["blocks.0.flows.0.actnorm.scale"]
    assert "actnorm.scale has values <= 0" in refused(negative)
    assert "no blocks.* keys" in refused({"weight": torch.zeros(2)})
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert main(["convert", "rosinality", str(tmp_path / "text.pt"), "--out", str(tmp_path / "o"), "--image-size",
                 "8", "--n-bits", "5"]) == 1  # fmt: skip
    assert "is not a PyTorch checkpoint" in capsys.readouterr().err
    with pytest.raises(ConversionError, match="divisible by 2\\*\\*levels"):
        from_rosinality(state, 6, 5)
