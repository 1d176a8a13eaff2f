"""OnlineNorm2d in float32/float16/bfloat16 and channels_last agrees with its float64 result."""

from __future__ import annotations

import pytest
import torch
from devices import DEVICES
from norm_helpers import CLAMP, cancellation_errors, rel_err, train_steps

from norms import OnlineNorm2d


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
