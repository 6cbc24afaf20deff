"""Memory modes and precisions against the plain path: same gradients (float64), same log_prob,
still invertible."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from conftest import images, random_model
from glowtorch import Glow, GlowConfig
from glowtorch.train import TrainingObjective


def gradients(model: Glow, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    loss, _ = TrainingObjective(model)(x)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, x.grad


def with_config(model: Glow, **changes) -> Glow:
    other = Glow(dataclasses.replace(model.config, **changes)).to(next(model.parameters()).dtype)
    other.load_state_dict(model.state_dict())
    return other


@pytest.mark.parametrize("memory", ["checkpoint", "reversible"])
@pytest.mark.parametrize("variant", [dict(), dict(coupling="additive", permutation="invconv"), dict(num_classes=0)])
def test_memory_modes_give_the_same_gradients_float64(memory: str, variant: dict) -> None:
    model = random_model(scale=0.1, depth=3, **variant)
    x = images(4)
    loss, grads, x_grad = gradients(model, x)
    other = with_config(model, memory=memory)
    loss_m, grads_m, x_grad_m = gradients(other, x)
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


def test_bfloat16_couplings_stay_invertible_and_close() -> None:
    torch.manual_seed(0)
    model = random_model(scale=0.05).float()
    fast = with_config(model, precision="bfloat16")
    x = images(6, dtype=torch.float32)
    zs, _ = fast.encode(x)
    assert_close(fast.decode(zs), x, atol=1e-5, rtol=0)
    lp_plain, lp_fast = model.log_prob(x), fast.log_prob(x)
    assert not torch.equal(lp_plain, lp_fast), "the bf16 path really ran"
    assert_close(lp_fast, lp_plain, rtol=2e-2, atol=0.5)


def test_runtime_fields_do_not_change_the_architecture() -> None:
    a = GlowConfig(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=4)
    b = dataclasses.replace(a, memory="reversible", precision="bfloat16")
    assert a.architecture() == b.architecture() and a != b
    with pytest.raises(ValueError, match="memory must be one of"):
        dataclasses.replace(a, memory="offload")
    with pytest.raises(ValueError, match="precision must be one of"):
        dataclasses.replace(a, precision="float16")
