"""A non-finite incoming gradient (float16 loss scaling overflowing) leaves Online Norm's
control state as it was, in both implementations, and float16 AMP trains through the steps
that GradScaler skips."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from devices import TRITON_DEVICES
from torch import nn

from norms import OnlineNorm2d

SHAPE = (4, 3, 2, 3)   # small: the Triton cases run in the interpreter on CPU
BAD_CHANNEL = 1
IMPL_DEVICES = [("eager", "cpu")] + [
    pytest.param("triton", p.values[0], marks=p.marks) for p in TRITON_DEVICES]


def step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    out = layer(x)
    out.backward(grad)
    return out.detach(), x.grad


def state(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {name: getattr(layer, name).clone() for name in ("m", "var", "u", "v")}


@pytest.mark.parametrize("impl,device", IMPL_DEVICES)
@pytest.mark.parametrize("ecm", ["ls", "ac", "none"])
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_non_finite_gradient_keeps_the_channels_control_state(impl, device, ecm, bad):
    torch.manual_seed(0)
    layer = OnlineNorm2d(SHAPE[1], ecm=ecm, clamp_val=1.0, impl=impl).to(device)
    data = [(torch.randn(SHAPE, device=device) * 2 + 1, torch.randn(SHAPE, device=device))
            for _ in range(3)]
    step(layer, *data[0])          # u, v away from their initial zeros
    before = state(layer)
    assert before["u"].abs().min() > 0 and before["v"].abs().min() > 0

    x, grad = data[1]
    # At the channel's running mean, where 'ac' does not clamp: the gradient passes there.
    x[2, BAD_CHANNEL, 1, 1] = layer.m[BAD_CHANNEL]
    poisoned = grad.clone()
    poisoned[2, BAD_CHANNEL, 1, 1] = bad
    clean = grad.clone()
    clean[2, BAD_CHANNEL, 1, 1] = 0.0
    healthy = copy.deepcopy(layer)
    step(layer, x, poisoned)
    step(healthy, x, clean)
    after = state(layer)
    assert all(torch.isfinite(t).all() for t in after.values())
    # The forward statistics saw a finite input: updated as by any step.
    assert torch.equal(after["m"], healthy.m) and torch.equal(after["var"], healthy.var)
    # Layer scaling mixes the channels of a sample, so the bad value reaches every channel's
    # control process; otherwise only its own channel's, and the others update as usual.
    kept = torch.ones(SHAPE[1], dtype=torch.bool, device=device) if ecm == "ls" else \
        torch.arange(SHAPE[1], device=device) == BAD_CHANNEL
    for name in ("u", "v"):
        expected = torch.where(kept, before[name], getattr(healthy, name))
        assert torch.equal(after[name], expected), name
        assert not torch.equal(after[name], before[name]) or bool(kept.all()), name

    # The step after computes what it would have from that state.
    with torch.no_grad():
        healthy.u.copy_(after["u"])
        healthy.v.copy_(after["v"])
    out, grad_x = step(layer, *data[2])
    out_ref, grad_x_ref = step(healthy, *data[2])
    assert torch.isfinite(grad_x).all()
    assert torch.equal(out, out_ref) and torch.equal(grad_x, grad_x_ref)
    assert torch.equal(layer.weight.grad.isfinite(), torch.ones_like(kept))
    for name, value in state(layer).items():
        assert torch.equal(value, getattr(healthy, name)), name


class _Overflow(torch.autograd.Function):
    """Identity forward; when `on`, the gradient passed back is inf (what a float16 backward
    under too large a loss scale produces)."""

    on = False

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.inf) if _Overflow.on else grad


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.norm = OnlineNorm2d(8, alpha_fwd=0.99, alpha_bkw=0.9)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(_Overflow.apply(self.norm(self.conv(x))))
        return self.head(y.mean((2, 3)))


def test_float16_amp_trains_through_the_steps_gradscaler_skips():
    torch.manual_seed(0)
    images = torch.randn(64, 3, 6, 6)
    labels = (images[:, 0].mean((1, 2)) > 0).long() + 2 * (images[:, 1].mean((1, 2)) > 0).long()
    net = _Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    losses, skipped = [], 0
    overflow_steps = {10, 11, 25}
    for i in range(60):
        batch = slice((i % 4) * 16, (i % 4 + 1) * 16)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(net(images[batch]), labels[batch])
        opt.zero_grad(set_to_none=True)
        _Overflow.on = i in overflow_steps
        try:
            scale = scaler.get_scale()
            scaler.scale(loss).backward()
        finally:
            _Overflow.on = False
        scaler.step(opt)
        scaler.update()
        skipped += scaler.get_scale() < scale
        losses.append(float(loss.detach()))
        assert torch.isfinite(net.norm.u).all() and torch.isfinite(net.norm.v).all(), i
    assert skipped == len(overflow_steps)
    assert all(math.isfinite(v) for v in losses)
    # Learning went on after the last overflow: the loss keeps falling.
    after = sum(losses[-8:]) / 8
    at_overflow = sum(losses[22:30]) / 8
    assert after < 0.8 * at_overflow, (at_overflow, after)
