"""The closed-form batch recurrences agree with a plain loop, for any sign of coefficient."""

from __future__ import annotations

import pytest
import torch

from norms.recurrences import constant_decay, varying_decay


def loop(state0: torch.Tensor, coef: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    states = [state0]
    for c, e in zip(coef, inputs):
        states.append(c * states[-1] + e)
    return torch.stack(states)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 129])
def test_varying_decay_with_zero_and_negative_coefficients(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    coef = torch.randn(n, 5, generator=gen, dtype=torch.float64).clamp(-1.2, 1.2)
    coef[n // 2, 1] = 0.0
    inputs = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    state0 = torch.randn(5, generator=gen, dtype=torch.float64)
    assert torch.allclose(varying_decay(state0, coef, inputs), loop(state0, coef, inputs),
                          rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,alpha,scale", [(1, 0.5, 0.5), (7, 0.999, 0.001),
                                           (256, 1 - 2 ** -12, 2 ** -12), (64, 0.99, 1.0)])
def test_constant_decay(n: int, alpha: float, scale: float) -> None:
    gen = torch.Generator().manual_seed(n)
    inputs = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    state0 = torch.randn(3, generator=gen, dtype=torch.float64)
    expected = loop(state0, torch.full((n, 3), alpha, dtype=torch.float64), scale * inputs)
    assert torch.allclose(constant_decay(state0, inputs, alpha, scale), expected,
                          rtol=1e-12, atol=1e-12)
