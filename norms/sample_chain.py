"""Online Norm's chain over the ranks of a data-parallel trial: every rank's samples, in order.

Online Normalization's state runs through the batch sample by sample, so a data-parallel
trial that should compute what one process computes needs every rank's per-sample
statistics in one chain: `SampleChain` all-gathers them (small (C, n) tensors, never
activations) and hands each rank back its own part. The training ops (norms.online_function,
norms.online_triton) take one as their `chain`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world_size(group: Any = None) -> int:
    """How many ranks `group` has: 1 without an initialized process group."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class SampleChain:
    """The global batch's samples, in rank order, for per-sample tensors with the samples
    along dimension 1: (C, n) for the eager op, (planes, n, C) for the Triton kernels.
    Every rank must hold the same number of samples."""

    def __init__(self, group: Any = None):
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """(C, n) on every rank -> (C, world * n), rank r's samples in columns r*n..(r+1)*n
        (likewise along dimension 1 of a tensor with more dimensions)."""
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)

    def local(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's columns of a (C, world * n) tensor."""
        n = t.shape[1] // self.world
        return t[:, self.rank * n:(self.rank + 1) * n]


def chain_over(group: Any = None) -> SampleChain | None:
    """The chain over `group`'s ranks; None where there is one rank (nothing to gather)."""
    return SampleChain(group) if world_size(group) > 1 else None
