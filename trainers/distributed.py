"""Where this process stands in a data-parallel trial, and the few collectives the trainer uses.

A trial on K workers keeps the meaning of one process on the whole batch: rank r holds the
r-th contiguous slice of every global batch (so together the ranks see exactly the images and
augmentations one process would), validation is split into contiguous shards whose sums are
added up, and only rank 0 writes files. The process group is whoever started us: Ray Train's
TorchTrainer, or `torchrun` for `onorm train` (see `init_from_env`). With no process group,
every function here is the one-process case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from trainers.errors import UserError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def batch_slice(self, batch_size: int) -> slice:
        """This rank's part of a global batch of `batch_size` (which K divides)."""
        local = batch_size // self.world
        return slice(self.rank * local, (self.rank + 1) * local)

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (shares differ by at most one)."""
        return slice(n * self.rank // self.world, n * (self.rank + 1) // self.world)


def current() -> Ranks:
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def check_batch(batch_size: int, ranks: Ranks) -> None:
    if batch_size % ranks.world:
        raise UserError(f"batch_size {batch_size} is not divisible by the {ranks.world} workers "
                        f"of this trial: choose a multiple of {ranks.world} (it stays the "
                        "global batch)")


def init_from_env() -> bool:
    """Join the process group `torchrun` describes (WORLD_SIZE > 1 in the environment): NCCL
    when CUDA is present, else gloo. True if this call created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks (itself with one process), in place."""
    if current().world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (on every rank)."""
    ranks = current()
    if ranks.world == 1:
        return [value]
    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    if current().world > 1:
        dist.barrier()
