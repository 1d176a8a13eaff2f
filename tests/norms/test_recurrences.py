"""The closed-form batch recurrences agree with a plain loop, for any sign of coefficient."""

from __future__ import annotations

import pytest
import torch

from norms import recurrences
from norms.recurrences import constant_decay, varying_decay


def loop(state0: torch.Tensor, coef: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """States (C, N+1) from coef and inputs (C, N), one sample at a time."""
    states = [state0]
    for c, e in zip(coef.t(), inputs.t()):
        states.append(c * states[-1] + e)
    return torch.stack(states, 1)


def samples_last(t: torch.Tensor) -> torch.Tensor:
    """(N, C) drawn as in a batch -> the (C, N) layout the recurrences take."""
    return t.t().contiguous()


@pytest.mark.parametrize("n", [1, 2, 3, 8, 129])
def test_varying_decay_with_zero_and_negative_coefficients(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    coef = torch.randn(n, 5, generator=gen, dtype=torch.float64).clamp(-1.2, 1.2)
    coef[n // 2, 1] = 0.0
    inputs = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    state0 = torch.randn(5, generator=gen, dtype=torch.float64)
    coef, inputs = samples_last(coef), samples_last(inputs)
    assert torch.allclose(varying_decay(state0, coef, inputs), loop(state0, coef, inputs),
                          rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,alpha,scale", [(1, 0.5, 0.5), (7, 0.999, 0.001),
                                           (256, 1 - 2 ** -12, 2 ** -12), (64, 0.99, 1.0)])
def test_constant_decay(n: int, alpha: float, scale: float) -> None:
    gen = torch.Generator().manual_seed(n)
    inputs = samples_last(torch.randn(n, 3, generator=gen, dtype=torch.float64))
    state0 = torch.randn(3, generator=gen, dtype=torch.float64)
    expected = loop(state0, torch.full((3, n), alpha, dtype=torch.float64), scale * inputs)
    assert torch.allclose(constant_decay(state0, inputs, alpha, scale), expected,
                          rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,alpha", [(1000, 0.5), (300, 0.01)])
def test_constant_decay_falls_back_to_the_scan_when_powers_leave_float64(n, alpha):
    # alpha**-n overflows float64 here, so the product form cannot be used
    gen = torch.Generator().manual_seed(n)
    inputs = samples_last(torch.randn(n, 3, generator=gen, dtype=torch.float64))
    state0 = torch.randn(3, generator=gen, dtype=torch.float64)
    expected = loop(state0, torch.full((3, n), alpha, dtype=torch.float64), (1 - alpha) * inputs)
    result = constant_decay(state0, inputs, alpha, 1 - alpha)
    assert torch.isfinite(result).all()
    assert torch.allclose(result, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [2, 64, 256])
def test_varying_decay_product_form_with_negative_coefficients(n, monkeypatch):
    # no zero coefficient: the cumulative-product form runs (the scan would fail the test);
    # signs alternate
    def no_scan(*args):
        raise AssertionError("the product form should have run, not the scan")
    monkeypatch.setattr(recurrences, "varying_decay_scan", no_scan)
    gen = torch.Generator().manual_seed(n)
    coef = torch.empty(n, 4, dtype=torch.float64).uniform_(0.3, 1.0, generator=gen)
    coef[::3] *= -1
    coef[1::7] = 1e-3   # nearly zero: later terms are divided by a small product
    inputs = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    state0 = torch.randn(4, generator=gen, dtype=torch.float64)
    coef, inputs = samples_last(coef), samples_last(inputs)
    assert torch.allclose(varying_decay(state0, coef, inputs), loop(state0, coef, inputs),
                          rtol=1e-11, atol=1e-12)
