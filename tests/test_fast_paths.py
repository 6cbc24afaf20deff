"""Memory modes and precisions against the plain path: same gradients (float64), same log_prob,
still invertible."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from torch._dynamo.utils import counters
from torch.testing import assert_close

from conftest import images, random_model, randomize
from glowtorch import ComputeConfig, Glow, GlowConfig
from glowtorch.checkpoint import load_training_state
from glowtorch.data import load_dataset
from glowtorch.distributed import Distributed
from glowtorch.layers import AffineCoupling, Coupling, FlowStep
from glowtorch.train import TrainConfig, Trainer, TrainingObjective, make_optimizer


def gradients(
    model: Glow, x: torch.Tensor, y: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    loss, _ = TrainingObjective(model, weight_y=0.5)(x, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, x.grad


def with_config(model: Glow, **compute) -> Glow:
    """A copy of ``model`` (same weights) that computes with the given ``ComputeConfig`` changes."""
    other = Glow(model.config, dataclasses.replace(model.compute, **compute)).to(next(model.parameters()).dtype)
    other.load_state_dict(model.state_dict())
    return other


@pytest.mark.parametrize("memory", ["checkpoint", "reversible"])
@pytest.mark.parametrize(
    "variant", [dict(), dict(coupling="additive", permutation="invconv"), dict(coupling="spline"), dict(num_classes=3)]
)
def test_memory_modes_give_the_same_gradients_float64(memory: str, variant: dict) -> None:
    model = random_model(scale=0.1, depth=3, **variant)
    x = images(4)
    y = torch.tensor([0, 1, 2, 0]) if model.config.num_classes else None
    loss, grads, x_grad = gradients(model, x, y)
    if y is not None:  # the class prior and the classifier take part
        assert grads["label_prior.weight"].abs().max() > 0 and grads["classifier.weight"].abs().max() > 0
    other = with_config(model, memory=memory)
    loss_m, grads_m, x_grad_m = gradients(other, x, y)
    assert_close(loss_m, loss, atol=0, rtol=1e-12)
    assert grads.keys() == grads_m.keys()
    for name in grads:
        assert_close(grads_m[name], grads[name], rtol=1e-6, atol=1e-10, msg=name)
    assert_close(x_grad_m, x_grad, rtol=1e-6, atol=1e-10)


def test_reversible_mode_float32_close_and_in_eval_unchanged() -> None:
    torch.manual_seed(0)
    model = random_model(scale=0.05, depth=4).float()
    x = images(8, dtype=torch.float32)
    _, grads, _ = gradients(model, x)
    other = with_config(model, memory="reversible")
    _, grads_r, _ = gradients(other, x)
    for name in grads:
        assert_close(grads_r[name], grads[name], rtol=1e-3, atol=1e-5, msg=name)
    with torch.no_grad():
        assert_close(other.log_prob(x), model.log_prob(x), atol=0, rtol=0)


def bfloat16_test_model() -> Glow:
    """A float32 model whose coupling networks matter: randomized at 0.3 (the rest at 0.05), they move each
    image's log_prob by 22 to 53 nats (against networks that output zero), of about -60 to -90; bfloat16
    networks change it by at most 0.19 (0.3%), measured on these seeds."""
    torch.manual_seed(0)
    model = random_model(scale=0.05).float()
    for seed, coupling in enumerate(m for m in model.modules() if isinstance(m, Coupling)):
        randomize(coupling.net, scale=0.3, seed=seed + 1)
    return model


def test_bfloat16_couplings_stay_invertible_and_close() -> None:
    model = bfloat16_test_model()
    fast = with_config(model, precision="bfloat16")
    x = images(6, dtype=torch.float32)
    zs, _ = fast.encode(x)
    assert_close(fast.decode(zs), x, atol=1e-4, rtol=0)
    lp_plain, lp_fast = model.log_prob(x), fast.log_prob(x)
    assert not torch.equal(lp_plain, lp_fast), "the bf16 path really ran"
    assert_close(lp_fast, lp_plain, rtol=5e-3, atol=0)  # networks that do nothing are off by 35% or more
    # Each coupling network in bfloat16 gives float32's output to bfloat16 rounding, and not nothing.
    inputs = []
    hooks = [step.coupling.net.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
             for step in model.flow_steps()]  # fmt: skip
    model.log_prob(x)
    for hook in hooks:
        hook.remove()
    assert len(inputs) == len(fast.flow_steps())
    for x_cond, plain, quick in zip(inputs, model.flow_steps(), fast.flow_steps(), strict=True):
        reference, output = plain.coupling.network(x_cond), quick.coupling.network(x_cond)
        assert output.dtype == torch.float32 and reference.abs().max() > 0.1
        assert_close(output, reference, rtol=0, atol=0.02 * reference.abs().max().item())


def test_compute_settings_are_validated_and_change_in_place() -> None:
    with pytest.raises(ValueError, match="memory must be one of"):
        ComputeConfig(memory="offload")
    with pytest.raises(ValueError, match="precision must be one of"):
        ComputeConfig(precision="float16")
    model = random_model()
    coupling = model.flow_steps()[0].coupling
    assert model.set_compute(precision="bfloat16") is model
    assert model.compute == ComputeConfig(precision="bfloat16") and coupling.autocast_dtype == torch.bfloat16
    model.set_compute(memory="reversible", channels_last=False)
    assert model.compute == ComputeConfig(memory="reversible", precision="bfloat16", channels_last=False)
    assert coupling.net.conv_in.weight.is_contiguous()
    model.set_compute(precision="float32", channels_last=True)
    assert coupling.autocast_dtype is None
    assert coupling.net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def unfolded_step(step: FlowStep, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A flow step written out from the paper's equations, layer by layer, each ActNorm after its
    convolution: the reference that the folded computation must equal."""
    actnorm, permutation, coupling = step.layers
    h = (x + actnorm.bias) * torch.exp(actnorm.log_scale)
    h, permutation_logdet = permutation(h)
    net = coupling.net
    x_a, x_b = h[:, : coupling.split], h[:, coupling.split :]
    v = torch.relu((net.conv_in(x_a) + net.norm_in.bias) * torch.exp(net.norm_in.log_scale))
    v = torch.relu((net.conv_hidden(v) + net.norm_hidden.bias) * torch.exp(net.norm_hidden.log_scale))
    out = net.conv_out.conv(v) * torch.exp(3 * net.conv_out.log_scale)
    logdet = x.shape[2] * x.shape[3] * actnorm.log_scale.sum() + permutation_logdet
    if isinstance(coupling, AffineCoupling):
        scale = torch.sigmoid(out[:, 1::2] + 2.0)
        y_b = (x_b + out[:, 0::2]) * scale
        logdet = logdet + torch.log(scale).flatten(1).sum(1)
    else:
        y_b = x_b + out
    return torch.cat([x_a, y_b], 1), logdet


@pytest.mark.parametrize("variant", [dict(), dict(coupling="additive", permutation="invconv")])
def test_folded_steps_equal_the_layers_one_by_one_float64(variant: dict) -> None:
    model = random_model(scale=0.3, depth=2, **variant)
    x = images(3, shape=(8, 2, 2))
    for step in model.levels[0].layers:
        assert step._foldable()
        y, logdet = step(x)
        y_ref, logdet_ref = unfolded_step(step, x)
        assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        assert_close(logdet, logdet_ref, rtol=1e-12, atol=1e-12)
        assert_close(step.unfolded(x)[0], y, rtol=1e-12, atol=1e-12)
        x = y


LAYOUTS = [dict(channels_last=True), dict(memory="reversible"), dict(memory="checkpoint", channels_last=True)]


@pytest.mark.parametrize("fast", LAYOUTS, ids=["channels_last", "reversible", "checkpoint_channels_last"])
@pytest.mark.parametrize("variant", [dict(), dict(coupling="additive", permutation="invconv")])
def test_fast_layouts_match_the_plain_path_float64(fast: dict, variant: dict) -> None:
    model = random_model(scale=0.1, depth=2, channels_last=False, **variant)
    other = with_config(model, **fast)
    assert other.compute != model.compute
    x = images(4)
    loss, grads, x_grad = gradients(model, x)
    loss_f, grads_f, x_grad_f = gradients(other, x)
    assert_close(loss_f, loss, atol=0, rtol=1e-12)
    for name in grads:
        assert_close(grads_f[name], grads[name], rtol=1e-9, atol=1e-12, msg=name)
    assert_close(x_grad_f, x_grad, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        zs, logdet = other.encode(x)
        zs_plain, logdet_plain = model.encode(x)
        for z, z_plain in zip(zs, zs_plain, strict=True):
            assert_close(z, z_plain, rtol=1e-12, atol=1e-12)
        assert_close(logdet, logdet_plain, rtol=1e-12, atol=1e-10)
        assert_close(other.decode(zs), x, atol=1e-10, rtol=0)
        assert_close(other.decode(zs_plain), model.decode(zs_plain), atol=1e-12, rtol=0)


def test_folded_step_logdet_is_the_jacobian_float64() -> None:
    """The folded ActNorm + 1x1 convolution + coupling step against the autograd Jacobian."""
    model = random_model(scale=0.3, depth=1, channels_last=False)
    step = model.levels[0].layers[0]
    assert step._foldable()
    x = images(1, shape=(8, 2, 2))
    jacobian = torch.autograd.functional.jacobian(lambda v: step(v)[0], x).reshape(x.numel(), x.numel())
    assert_close(step(x)[1], torch.linalg.slogdet(jacobian)[1].view(1), rtol=1e-10, atol=1e-10)
    assert_close(step.inverse(step(x)[0])[0], x, rtol=0, atol=1e-12)


def test_initialization_takes_the_unfolded_path() -> None:
    """Data-dependent init sets every ActNorm from the activations reaching it, so the initialized model's
    activations have zero mean and unit variance per channel where each ActNorm sits."""
    torch.manual_seed(0)
    model = Glow(GlowConfig(image_shape=(2, 4, 4), levels=2, depth=2, hidden_channels=8)).double()
    x = images(64)
    model.initialize(x)
    step = model.levels[0].layers[0]
    h, _ = model.squeeze(x)
    y, _ = step.actnorm(h)
    assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(8, dtype=torch.float64), atol=1e-12, rtol=0)
    assert_close(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(8, dtype=torch.float64), atol=1e-9, rtol=0)
    net = step.coupling.net
    hidden = net.norm_in(net.conv_in(step.layers[1](y)[0][:, : step.coupling.split]))[0]
    assert_close(hidden.mean(dim=(0, 2, 3)), torch.zeros(8, dtype=torch.float64), atol=1e-12, rtol=0)
    assert_close(hidden.std(dim=(0, 2, 3), unbiased=False), torch.ones(8, dtype=torch.float64), atol=1e-9, rtol=0)


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_training_loss_and_decoder_match_eager() -> None:
    """``TrainConfig.compile`` compiles the loss module; ``compile_decode`` the sampler. Same numbers."""
    torch.manual_seed(0)
    model = random_model(scale=0.05, depth=2).float()
    x = images(8, dtype=torch.float32)
    loss, grads, _ = gradients(model, x)
    model.zero_grad(set_to_none=True)
    compiled_loss, _ = torch.compile(TrainingObjective(model))(x)
    compiled_loss.backward()
    assert_close(compiled_loss.detach(), loss, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        if name in grads:
            assert_close(p.grad, grads[name], rtol=1e-3, atol=1e-5, msg=name)
    eager_zs, eager = model.sample_with_latents(6, 0.7, generator=torch.Generator().manual_seed(1))
    eager_decoded = model.decode(eager_zs)
    counters.clear()
    model.compile_decode()
    zs, compiled = model.sample_with_latents(6, 0.7, generator=torch.Generator().manual_seed(1))
    assert counters["stats"]["unique_graphs"] >= 1  # sampling went through torch.compile
    graphs = counters["stats"]["unique_graphs"]
    decoded = model.decode(eager_zs)
    assert counters["stats"]["unique_graphs"] > graphs  # and so did decoding
    assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert_close(decoded, eager_decoded, rtol=1e-4, atol=1e-5)
    for z, eager_z in zip(zs, eager_zs, strict=True):
        assert_close(z, eager_z, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("save_memory", [False, True])
@pytest.mark.parametrize("name", ["adam", "adamax"])
def test_fast_optimizer_step_equals_the_per_parameter_loop(name: str, save_memory: bool) -> None:
    model = random_model()
    twin, before = with_config(model), with_config(model)
    fast = make_optimizer(name, list(model.parameters()), 1e-2, save_memory)
    kernel = {k: v for k, v in fast.param_groups[0].items() if k in ("fused", "foreach")}
    # Fused Adam has no temporaries; foreach Adamax has gradient-sized ones, so not when saving memory.
    expected = {"fused": True, "foreach": False} if name == "adam" else {"foreach": not save_memory}
    assert kernel == expected
    loop = (torch.optim.Adam if name == "adam" else torch.optim.Adamax)(twin.parameters(), lr=1e-2, foreach=False)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            p.grad = torch.empty_like(p).normal_(generator=generator)  # laid out like p, as autograd's are
            q.grad = p.grad.clone()
        fast.step()
        loop.step()
    for (name_, p), q, p0 in zip(model.named_parameters(), twin.parameters(), before.parameters(), strict=True):
        assert_close(p, q, rtol=1e-6, atol=1e-9, msg=name_)
        assert not torch.equal(p, p0), name_


@pytest.mark.parametrize("channels_last", [True, False])
def test_gradients_are_laid_out_like_their_parameters(channels_last: bool) -> None:
    """Adam's fused CPU kernel reads a gradient in its parameter's memory order (torch 2.13 gives wrong
    updates otherwise), and DistributedDataParallel copies every gradient whose strides differ from its
    parameter's (warning "Grad strides do not match bucket view strides"): so every gradient must have
    exactly its parameter's strides, size-1 axes included (a 1x1 kernel is contiguous in both layouts)."""
    model = Glow(GlowConfig(image_shape=(3, 8, 8), levels=2, depth=2, hidden_channels=8, num_classes=3),
                 ComputeConfig(channels_last=channels_last))  # fmt: skip
    x = images(4, (3, 8, 8), dtype=torch.float32)
    model.initialize(x)
    loss, _ = TrainingObjective(model)(x, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    checked = 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.stride() == p.grad.stride(), name
        checked += p.dim() == 4 and p.shape[-1] == 1 and p.shape[0] > 1  # the 1x1 kernels were among them
    assert checked > 0


def test_resume_keeps_this_runs_optimizer_kernel(tmp_path) -> None:
    data = load_dataset("digits")
    model_config = GlowConfig(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=8)
    train_config = TrainConfig(batch_size=16, init_images=32, steps=2, eval_every=0, optimizer="adam")
    Trainer(model_config, train_config, data, None, tmp_path / "run", log=lambda *a: None).run(progress=False)
    state = load_training_state(tmp_path / "run")
    for group in state["optimizer"]["param_groups"]:  # as a run with the default loop kernel saved it
        group.update(fused=None, foreach=None)
    resumed = Trainer(model_config, train_config, data, None, tmp_path / "other", log=lambda *a: None)
    resumed.restore(state)
    assert resumed.optimizer.param_groups[0]["fused"] is True
    assert resumed.optimizer.state_dict()["state"][0]["exp_avg"].abs().sum() > 0  # the saved moments loaded
    assert resumed.train_step(resumed.objective)


def test_bfloat16_on_a_gpu_without_it_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    model_config = GlowConfig(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=8)
    with pytest.raises(ValueError, match="cannot compute in bfloat16: use --precision float32") as error:
        train_config = TrainConfig(batch_size=16, steps=1, precision="bfloat16")
        Trainer(model_config, train_config, load_dataset("digits"), None, tmp_path / "run",
                dist=Distributed(device="cuda:0"))  # fmt: skip
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_ema_is_the_decayed_average_of_the_weights(tmp_path) -> None:
    data = load_dataset("digits")
    model_config = GlowConfig(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=8)
    train_config = TrainConfig(batch_size=16, init_images=32, steps=3, eval_every=0, ema_decay=0.5)
    trainer = Trainer(model_config, train_config, data, None, tmp_path / "run", log=lambda *a: None)
    trainer.initialize()
    expected = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    for step in range(3):
        trainer.step = step
        assert trainer.train_step(trainer.objective)
        decay = min(0.5, (1 + step) / (10 + step))  # the warmup of the decay, then ema_decay
        for name, p in trainer.model.named_parameters():
            expected[name] = decay * expected[name] + (1 - decay) * p.detach()
    for name, p in trainer.ema.named_parameters():
        assert_close(p.detach(), expected[name], rtol=1e-6, atol=1e-7, msg=name)
    pairs = zip(trainer.ema.parameters(), trainer.model.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in pairs)  # the average lags the weights
