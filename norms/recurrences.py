"""Closed-form solutions of Online Normalization's per-sample recurrences over a batch.

Every state update in the algorithm is a first-order linear recurrence across the samples of
a batch. Solving it in closed form with a log-depth associative scan (composed decays are
the scalars alpha**k when the decay is constant; pairs (A, B) when it varies) replaces the
reference's per-sample loop with a handful of small (N, C) tensor ops. Everything here runs
in float64: a decay of 0.999 rounded to float32 is already off by 1e-5, and powers up to N
compound that.
"""

from __future__ import annotations

import torch


def constant_decay(state0: torch.Tensor, inputs: torch.Tensor, alpha: float,
                   scale: float) -> torch.Tensor:
    """States s_0..s_N of s_{i+1} = alpha*s_i + scale*inputs_i, s_0 = state0.

    state0: (C,) float64; inputs: (N, C) float64. Returns (N+1, C). A Hillis-Steele scan
    whose composed decays are the scalars alpha**step: elementwise ops only, because a
    matrix product with the decay-power matrix goes to a multithreaded BLAS, whose wake-ups
    cost far more than this small product on a busy machine.
    """
    n = inputs.shape[0]
    states = torch.empty((n + 1, inputs.shape[1]), dtype=inputs.dtype, device=inputs.device)
    states[0] = state0
    torch.mul(inputs, scale, out=states[1:])
    step = 1
    while step <= n:
        # After this round, state i sums the contributions of elements i-2*step+1..i.
        states[step:] = torch.add(states[step:], states[:-step], alpha=alpha ** step)
        step *= 2
    return states


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
