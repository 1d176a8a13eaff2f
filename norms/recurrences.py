"""Closed-form solutions of Online Normalization's per-sample recurrences over a batch.

Every state update in the algorithm is a first-order linear recurrence across the samples of
a batch, s_{i+1} = c_i*s_i + e_i, whose solution is s_i = P_i*(s_0 + sum_{j<i} e_j/P_{j+1})
with P_i = c_0*...*c_{i-1}: a cumulative product and a cumulative sum, a handful of per-(n, c)
ops whatever N is. That form is used wherever the products stay inside float64's range
(always for the constant decays of typical batches). Otherwise (a decay so small that its
N-th power underflows, or a varying coefficient that is zero or nearly so, which v's can be)
a log-depth associative scan takes over: exact for any coefficient, but log2(N) rounds of
ops. Everything here runs in float64: a decay of 0.999 rounded to float32 is already off by
1e-5, and powers up to N compound that.

Samples run along the last dimension: inputs are (C, N), states (C, N+1). Scans along the
contiguous dimension are several times faster than along the first one.
"""

from __future__ import annotations

import functools
import math

import torch

# |log P_i| above this and P_i or 1/P_i leaves float64's range (about e^709) too closely.
_LOG_RANGE = 600.0


@functools.lru_cache(maxsize=64)
def _decay_powers(alpha: float, scale: float, n: int, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha^i for i = 0..n, scale*alpha^-(j+1) for j = 0..n-1) as float64 rows, cached
    per layer shape."""
    exponents = torch.arange(n + 1, dtype=torch.float64)
    powers = torch.pow(torch.tensor(alpha, dtype=torch.float64), exponents)
    return powers.to(device), (scale / powers[1:]).to(device)


def constant_decay(state0: torch.Tensor, inputs: torch.Tensor, alpha: float,
                   scale: float) -> torch.Tensor:
    """States s_0..s_N of s_{i+1} = alpha*s_i + scale*inputs_i, s_0 = state0.

    state0: (C,), any floating dtype; inputs: (C, N) float64. Returns (C, N+1) float64.
    """
    n = inputs.shape[1]
    if alpha <= 0.0 or n * -math.log(alpha) > _LOG_RANGE:
        return constant_decay_scan(state0, inputs, alpha, scale)
    powers, scaled_inverse = _decay_powers(alpha, scale, n, inputs.device)
    # Column 0 of the cumulative sum is s_0 itself (P_0 = 1), so no separate add is needed.
    terms, rest = _after_state(state0, inputs)
    torch.mul(inputs, scaled_inverse, out=rest)
    return terms.cumsum_(1).mul_(powers)


def _after_state(state0: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A float64 (C, N+1) buffer holding state0 in column 0, and a view of its other columns
    for the caller to write into (with out=, saving a copy)."""
    buffer = torch.empty((inputs.shape[0], inputs.shape[1] + 1), dtype=inputs.dtype,
                         device=inputs.device)
    buffer[:, 0] = state0
    return buffer, buffer[:, 1:]


# Partial products of v's coefficients outside (1/_PRODUCT_RANGE, _PRODUCT_RANGE) in magnitude
# (zero, tiny or huge ones) would make the product form inaccurate or infinite.
_PRODUCT_RANGE = math.exp(_LOG_RANGE)


def varying_decay(state0: torch.Tensor, coef: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """States s_0..s_N of s_{i+1} = coef_i*s_i + inputs_i, s_0 = state0; (C, N) in, (C, N+1) out.

    coef may be negative, zero or tiny (v's coefficient 1 - (1-b)*E[y^2] is, for large
    inputs): the product form runs only when every partial product stays well inside
    float64's range, else the scan. On CUDA the scan always runs: checking the range would
    wait for the device.
    """
    if coef.device.type == "cpu":
        products = torch.cumprod(coef, 1)
        lo, hi = torch.aminmax(products.abs())
        if float(lo) > 1.0 / _PRODUCT_RANGE and float(hi) < _PRODUCT_RANGE:
            states, rest = _after_state(state0, inputs)
            torch.div(inputs, products, out=rest)
            states.cumsum_(1)
            rest *= products
            return states
    return varying_decay_scan(state0, coef, inputs)


def constant_decay_scan(state0: torch.Tensor, inputs: torch.Tensor, alpha: float,
                   scale: float) -> torch.Tensor:
    """States s_0..s_N of s_{i+1} = alpha*s_i + scale*inputs_i, s_0 = state0.

    state0: (C,) float64; inputs: (C, N) float64. Returns (C, N+1). A Hillis-Steele scan
    whose composed decays are the scalars alpha**step: elementwise ops only, because a
    matrix product with the decay-power matrix goes to a multithreaded BLAS, whose wake-ups
    cost far more than this small product on a busy machine.
    """
    n = inputs.shape[1]
    states, rest = _after_state(state0, inputs)
    torch.mul(inputs, scale, out=rest)
    step = 1
    while step <= n:
        # After this round, state i sums the contributions of elements i-2*step+1..i.
        states[:, step:] = torch.add(states[:, step:], states[:, :-step], alpha=alpha ** step)
        step *= 2
    return states


def varying_decay_scan(state0: torch.Tensor, coef: torch.Tensor, inputs: torch.Tensor
                       ) -> torch.Tensor:
    """States s_0..s_N of s_{i+1} = coef_i*s_i + inputs_i, s_0 = state0 (Hillis-Steele scan).

    coef may be zero or negative, so no logarithms or division: maps s -> A*s + B are composed
    pairwise in log2(N+1) rounds. state0: (C,), coef and inputs: (C, N). Returns (C, N+1).
    """
    c, n = coef.shape
    # maps[0] holds the A's, maps[1] the B's. Element 0 is the constant map s -> state0, so
    # the composed prefix ending at element i is the constant map s -> s_i.
    maps = torch.empty((2, c, n + 1), dtype=coef.dtype, device=coef.device)
    maps[0, :, 0] = 0
    maps[0, :, 1:] = coef
    maps[1, :, 0] = state0
    maps[1, :, 1:] = inputs
    step = 1
    while step <= n:
        # (A_i, B_i) o (A_j, B_j) = (A_i*A_j, A_i*B_j + B_i), with j = i - step.
        composed = maps[:, :, :-step] * maps[0, :, step:]
        composed[1] += maps[1, :, step:]
        maps[:, :, step:] = composed
        step *= 2
    return maps[1]
