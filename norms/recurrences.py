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
    pairwise in log2(N) rounds. state0: (C,), coef and inputs: (N, C). Returns (N+1, C).
    """
    # Element 0 is the constant map s -> state0; prefix composition then yields s_i directly.
    mul = torch.cat([torch.zeros_like(state0)[None], coef])
    add = torch.cat([state0[None], inputs])
    step = 1
    length = mul.shape[0]
    while step < length:
        # Compose map i with the prefix ending at i-step: (A_i, B_i) o (A_j, B_j).
        new_add = torch.addcmul(add[step:], mul[step:], add[:-step])
        new_mul = mul[step:] * mul[:-step]
        add = torch.cat([add[:step], new_add])
        mul = torch.cat([mul[:step], new_mul])
        step *= 2
    return add
