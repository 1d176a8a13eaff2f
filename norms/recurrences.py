"""Closed-form solutions of Online Normalization's per-sample recurrences over a batch.

Every state update in the algorithm is a first-order linear recurrence across the samples of
a batch. Solving it in closed form (a decay-power matrix when the decay is constant, a
log-depth associative scan when it varies) replaces the reference's per-sample loop with a
handful of small (N, C) tensor ops. Everything here runs in float64: a decay of 0.999 rounded
to float32 is already off by 1e-5, and powers up to N compound that.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=64)
def decay_matrix(n: int, alpha: float, scale: float, device: torch.device) -> torch.Tensor:
    """(n+1, n) float64 matrix W with W[i, j] = scale * alpha**(i-1-j) for j < i, else 0.

    Row i weighs the inputs of samples 0..i-1 in the state seen by sample i; row n is the
    state after the whole batch. Cached because the same few (batch size, decay) pairs recur
    every step.
    """
    rows = torch.arange(n + 1, dtype=torch.float64, device=device)[:, None]
    cols = torch.arange(n, dtype=torch.float64, device=device)[None, :]
    lag = rows - 1.0 - cols
    powers = torch.pow(torch.tensor(alpha, dtype=torch.float64, device=device), lag.clamp_min(0))
    return torch.where(lag >= 0, scale * powers, torch.zeros((), dtype=torch.float64,
                                                             device=device))


@functools.lru_cache(maxsize=64)
def decay_powers(n: int, alpha: float, device: torch.device) -> torch.Tensor:
    """(n+1, 1) float64 column of alpha**i, i = 0..n: how much of the initial state remains."""
    exps = torch.arange(n + 1, dtype=torch.float64, device=device)[:, None]
    return torch.pow(torch.tensor(alpha, dtype=torch.float64, device=device), exps)


def constant_decay(state0: torch.Tensor, inputs: torch.Tensor, alpha: float,
                   scale: float) -> torch.Tensor:
    """States s_0..s_N of s_{i+1} = alpha*s_i + scale*inputs_i, s_0 = state0.

    state0: (C,) float64; inputs: (N, C) float64. Returns (N+1, C).
    """
    n = inputs.shape[0]
    powers = decay_powers(n, alpha, inputs.device)
    weights = decay_matrix(n, alpha, scale, inputs.device)
    return torch.addmm(powers * state0, weights, inputs)


def varying_decay(state0: torch.Tensor, coef: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """States s_0..s_N of s_{i+1} = coef_i*s_i + inputs_i, s_0 = state0 (Hillis-Steele scan).

    coef may be zero or negative, so no logarithms or division: maps s -> A*s + B are composed
    pairwise in log2(N+1) rounds. state0: (C,), coef and inputs: (N, C). Returns (N+1, C).
    """
    n, c = coef.shape
    # maps[0] holds the A's, maps[1] the B's. Element 0 is the constant map s -> state0, so
    # the composed prefix ending at element i is the constant map s -> s_i.
    maps = torch.empty((2, n + 1, c), dtype=coef.dtype, device=coef.device)
    maps[0, 0] = 0
    maps[0, 1:] = coef
    maps[1, 0] = state0
    maps[1, 1:] = inputs
    step = 1
    while step <= n:
        # (A_i, B_i) o (A_j, B_j) = (A_i*A_j, A_i*B_j + B_i), with j = i - step.
        composed = maps[:, :-step] * maps[0, step:]
        composed[1] += maps[1, step:]
        maps[:, step:] = composed
        step *= 2
    return maps[1]
