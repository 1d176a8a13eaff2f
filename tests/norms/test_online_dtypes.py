"""OnlineNorm2d in float32/float16/bfloat16 and channels_last agrees with its float64 result."""

from __future__ import annotations

import pytest
import torch
from devices import DEVICES

from norms import OnlineNorm2d

SHAPE = (8, 4, 5, 6)
CLAMP = 1.5


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).abs().max() / expected.abs().max())


def train_steps(dtype: torch.dtype, channels_last: bool, ecm: str, clamp: float,
                steps: int = 3, device: str = "cpu",
                impl: str = "auto") -> list[dict[str, torch.Tensor]]:
    """Three training steps on `device`; every result comes back on the CPU."""
    gen = torch.Generator().manual_seed(1)
    layer = OnlineNorm2d(SHAPE[1], alpha_fwd=0.9, alpha_bkw=0.8, ecm=ecm, clamp_val=clamp,
                         impl=impl)
    with torch.no_grad():
        layer.weight.copy_(1 + 0.3 * torch.randn(SHAPE[1], generator=gen))
        layer.bias.copy_(0.3 * torch.randn(SHAPE[1], generator=gen))
    layer.to(device)
    results = []
    for _ in range(steps):
        x64 = 2 * torch.randn(SHAPE, generator=gen, dtype=torch.float64) + 1
        g64 = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
        x, g = x64.to(device, dtype), g64.to(device, dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            g = g.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        layer.weight.grad = layer.bias.grad = None
        out = layer.train()(x)
        out.backward(g)
        layer.eval()
        with torch.no_grad():
            evaluated = layer(x.detach())
        results.append({"out": out.detach(), "grad_x": x.grad, "eval": evaluated,
                        "grad_weight": layer.weight.grad.clone(),
                        "m": layer.m.clone(), "v": layer.v.clone()})
        results[-1] = {key: value.cpu() for key, value in results[-1].items()}
    return results


@pytest.mark.parametrize("ecm", ["ls", "ac", "none"])
@pytest.mark.parametrize("dtype,channels_last,tol", [
    (torch.float32, False, 1e-5), (torch.float32, True, 1e-5), (torch.float64, True, 1e-10),
    (torch.float16, False, 2e-2), (torch.bfloat16, False, 6e-2), (torch.bfloat16, True, 6e-2)])
@pytest.mark.parametrize("device", DEVICES)
def test_matches_float64(dtype: torch.dtype, channels_last: bool, tol: float, ecm: str,
                         device: str) -> None:
    # In half precision an output rounded across the clamp edge switches its gradient on or
    # off (an O(1) change), so there the clamp is set wide enough never to act.
    clamp = CLAMP if dtype in (torch.float32, torch.float64) else 50.0
    expected = train_steps(torch.float64, False, ecm, clamp)
    actual = train_steps(dtype, channels_last, ecm, clamp, device=device)
    for step, (got, want) in enumerate(zip(actual, expected)):
        assert got["out"].dtype == dtype and got["grad_x"].dtype == dtype
        assert got["grad_weight"].dtype == torch.float32
        if channels_last:
            assert got["out"].is_contiguous(memory_format=torch.channels_last)
        if ecm == "ac" and clamp == CLAMP:
            assert bool((want["out"].abs() == CLAMP).any())  # the clamp is exercised
        for key in want:
            got_value, want_value = got[key], want[key]
            assert rel_err(got_value, want_value) < tol, (step, key)


def cancellation_errors(device: str = "cpu", impl: str = "auto") -> dict[str, float]:
    """float32 against float64 for inputs with a large common offset, where E[x^2] - E[x]^2
    (forward) and sum(g*x) - mean*sum(g) (backward) from float32 sums would lose most
    digits. Relative errors of the running variance and the weight gradient (made of
    sum(g*(x - mean)) alone), per layout. (The input gradient x*Q + R cancels whatever the
    sums, so it cannot tell.)"""
    gen = torch.Generator().manual_seed(2)
    # Values exactly representable in float32, so only the arithmetic differs.
    x64 = (1e4 + torch.randn(4, 3, 8, 8, generator=gen)).double()
    g64 = torch.randn(4, 3, 8, 8, generator=gen).double()
    errors = {}
    for channels_last in (False, True):
        results = []
        for dtype in (torch.float64, torch.float32):
            # alpha_fwd 0: var is the last sample's own variance, not swamped by the
            # a*(1-a)*d^2 term of a decaying mean (which hid a 9-25% error at 0.5).
            layer = OnlineNorm2d(3, alpha_fwd=0.0, ecm="none", impl=impl).to(device)
            x = x64.to(device, dtype, copy=True)
            g = g64.to(device, dtype)
            if channels_last:   # the gradient too, as a channels_last network passes it
                x = x.contiguous(memory_format=torch.channels_last)
                g = g.contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            layer(x).backward(g)
            results.append((layer.var.cpu(), layer.weight.grad.cpu()))
        layout = "channels_last" if channels_last else "contiguous"
        errors[f"{layout} var"] = rel_err(results[1][0], results[0][0])
        errors[f"{layout} grad_weight"] = rel_err(results[1][1], results[0][1])
    return errors


@pytest.mark.parametrize("device", DEVICES)
def test_cancellation_in_float32_statistics(device: str) -> None:
    errors = cancellation_errors(device)
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("tile", [64, 1 << 18])
def test_channels_last_passes_agree_with_contiguous_ones(tile, monkeypatch):
    # channels_last has CPU passes of its own (norms/passes.py), whose sums of products
    # run a few samples at a time when the tile is smaller than the batch.
    from norms import passes
    monkeypatch.setattr(passes, "_DOT_TILE", tile)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 5, 3, generator=gen) * 3 + 1
    g = torch.randn(6, 4, 5, 3, generator=gen)
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        layer = OnlineNorm2d(4, ecm="ls")
        xi = x.clone(memory_format=fmt).requires_grad_()
        for _ in range(2):
            xi.grad = None
            out = layer(xi)
            out.backward(g.contiguous(memory_format=fmt))
        assert out.is_contiguous(memory_format=fmt) and xi.grad.is_contiguous(memory_format=fmt)
        results.append([out.detach(), xi.grad, layer.weight.grad, layer.u, layer.v, layer.var])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
