"""Online norm state survives deep copies, whole-model pickling and state_dict round trips."""

from __future__ import annotations

import copy
import dataclasses
import io

import pytest
import torch
from devices import DEVICES
from torch import nn

from norms import OnlineNorm1d, OnlineNorm2d
from norms.online_inputs import OnlineNormConstants

BUFFERS = ("m", "var", "u", "v")


def small_model(device: str = "cpu") -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), OnlineNorm2d(4, alpha_fwd=0.9),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5),
                         OnlineNorm1d(5)).to(device)


def train_step(model: nn.Module, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    x = torch.randn(6, 3, 6, 6, generator=gen).to(device)
    model.train()
    out = model(x)
    out.backward(torch.randn(out.shape, generator=gen).to(device))
    return out.detach()


def norm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{name}": getattr(module, name).clone() for i, module in enumerate(model)
            if isinstance(module, (OnlineNorm1d, OnlineNorm2d)) for name in BUFFERS}


@pytest.mark.parametrize("device", DEVICES)
def test_deep_copy_has_independent_statistics(device: str) -> None:
    model = small_model(device)
    train_step(model, 0)
    before = norm_buffers(model)
    twin = copy.deepcopy(model)
    train_step(twin, 1)
    for key, value in norm_buffers(model).items():
        assert torch.equal(value, before[key]), f"training the copy changed the original {key}"
    changed = norm_buffers(twin)
    assert all(not torch.equal(changed[k], before[k]) for k in before if k.endswith((".m", ".v")))
    # The copy and an original trained the same way stay identical.
    train_step(model, 1)
    for key, value in norm_buffers(model).items():
        assert torch.equal(value, changed[key])


@pytest.mark.parametrize("device", DEVICES)
def test_whole_model_save_load_continues_identically(device: str) -> None:
    model = small_model(device)
    train_step(model, 0)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert all(torch.equal(a, b) for a, b in zip(norm_buffers(model).values(),
                                                 norm_buffers(loaded).values()))
    out_original, out_loaded = train_step(model, 1), train_step(loaded, 1)
    assert torch.equal(out_original, out_loaded)
    assert all(torch.equal(a, b) for a, b in zip(norm_buffers(model).values(),
                                                 norm_buffers(loaded).values()))


@pytest.mark.parametrize("device", DEVICES)
def test_state_dict_round_trip(device: str) -> None:
    model = small_model(device)
    train_step(model, 0)
    state = model.state_dict()
    for i, module in enumerate(model):
        if isinstance(module, (OnlineNorm1d, OnlineNorm2d)):
            assert {f"{i}.{name}" for name in BUFFERS + ("weight", "bias")} <= set(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = small_model(device)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(train_step(model, 1), train_step(fresh, 1))
    for a, b in zip(norm_buffers(model).values(), norm_buffers(fresh).values()):
        assert torch.equal(a, b)


def test_eval_changes_no_state_and_buffers_are_float32() -> None:
    model = small_model()
    train_step(model, 0)
    before = norm_buffers(model)
    model.eval()
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    for key, value in norm_buffers(model).items():
        assert value.dtype == torch.float32
        assert torch.equal(value, before[key])


def test_state_carries_across_batches() -> None:
    # Two batches of 3 give the same forward state as one batch of 6 (samples in order).
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 2, 4, 4, generator=gen, dtype=torch.float64)
    whole, split = OnlineNorm2d(2, alpha_fwd=0.7), OnlineNorm2d(2, alpha_fwd=0.7)
    out_whole = whole(x)
    out_split = torch.cat([split(x[:3]), split(x[3:])])
    # Within the split run, the state is rounded to float32 between the batches.
    assert torch.allclose(out_whole, out_split, rtol=1e-5, atol=1e-6)
    assert torch.allclose(whole.m, split.m) and torch.allclose(whole.var, split.var)


def test_inplace_activation_after_the_layer() -> None:
    # Models apply ReLU(inplace=True) to the norm's output: it must not be a view.
    for layer, shape in ((OnlineNorm2d(3), (4, 3, 5, 5)), (OnlineNorm1d(3), (4, 3))):
        x = torch.randn(shape, requires_grad=True)
        expected = torch.relu(layer.train()(x))
        layer.reset_running_stats()
        out = nn.ReLU(inplace=True)(layer(x))
        assert torch.equal(out, expected)
        out.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_the_constants_are_one_frozen_object_the_attributes_read() -> None:
    layer = OnlineNorm2d(3, alpha_fwd=0.9, alpha_bkw=0.8, eps=1e-4, ecm="ac", ls_eps=1e-3,
                         clamp_val=2)
    assert layer.constants == OnlineNormConstants(0.9, 0.8, 1e-4, "ac", 1e-3, 2.0)
    assert hash(layer.constants) == hash(OnlineNormConstants(0.9, 0.8, 1e-4, "ac", 1e-3, 2))
    assert (layer.alpha_fwd, layer.alpha_bkw, layer.eps, layer.ecm, layer.ls_eps,
            layer.clamp_val) == (0.9, 0.8, 1e-4, "ac", 1e-3, 2.0)
    assert type(layer.clamp_val) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.constants.eps = 1.0
    assert set(layer.state_dict()) == {"weight", "bias", "m", "var", "u", "v"}
    assert repr(layer).splitlines()[1].strip() == (
        "3, alpha_fwd=0.9, alpha_bkw=0.8, eps=0.0001, affine=True, ecm='ac'")


def test_setting_an_attribute_replaces_the_constants_checked() -> None:
    x = torch.randn(4, 3, 5, 5)
    layer = OnlineNorm2d(3, alpha_fwd=0.5)
    layer.alpha_fwd = 0.9
    assert layer.constants.alpha_fwd == 0.9
    layer(x)
    built = OnlineNorm2d(3, alpha_fwd=0.9)
    built(x)
    assert torch.equal(layer.m, built.m) and torch.equal(layer.var, built.var)
    with pytest.raises(ValueError, match=r"alpha_bkw must be in \[0, 1\], got 1.5"):
        layer.alpha_bkw = 1.5
    with pytest.raises(ValueError, match="unknown ecm 'xx': choose one of ls, ac, none"):
        layer.ecm = "xx"
    assert layer.constants == OnlineNorm2d(3, alpha_fwd=0.9).constants   # as it was



def test_setting_the_compensation_changes_the_evaluation_path_too() -> None:
    x = 10 * torch.randn(4, 3, 5, 5)
    layer = OnlineNorm2d(3, ecm="ls")
    layer.ecm, layer.clamp_val = "ac", 0.5
    built = OnlineNorm2d(3, ecm="ac", clamp_val=0.5)
    for module in (layer, built):
        module(x)   # training: the same state
        module.eval()
    out = layer(x)
    assert torch.equal(out, built(x))
    assert out.abs().max().item() == 0.5   # clamped at the new bound, not layer-scaled

def test_a_layer_pickled_with_its_constants_one_by_one_loads() -> None:
    # Layers pickled before the constants were one object hold them as attributes.
    layer = OnlineNorm2d(3, alpha_fwd=0.9, ecm="ac", clamp_val=2.0)
    train_step(nn.Sequential(nn.Conv2d(3, 3, 1), layer, nn.Flatten()), 0)
    state = copy.deepcopy(layer.__dict__)
    constants = state.pop("constants")
    state.update(dataclasses.asdict(constants))
    old = OnlineNorm2d.__new__(OnlineNorm2d)
    old.__setstate__(state)
    assert old.constants == constants and "alpha_fwd" not in old.__dict__
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    u_before = layer.u.clone()
    for module in (old, layer):   # a training step each, from the same state
        module(x).square().sum().backward()
    for name in BUFFERS:
        assert torch.equal(getattr(old, name), getattr(layer, name)), name
    assert not torch.equal(old.u, u_before)   # the step reached the control state
    assert torch.equal(old.eval()(x), layer.eval()(x))
