"""Chains over ranks inside one process, for the Online Norm ops' `chain` argument.

norms.sample_chain.SampleChain gathers with torch.distributed; ThreadChain stands in for it
without process groups: each rank is a thread of this process, and they run one at a time:
a rank runs until it gathers, then waits there for the others, so every rank has its own samples
and the ops run exactly as in a data-parallel trial. The ranks must call the autograd
Functions' forward and backward themselves (`call_function`): a CUDA backward through the
autograd engine runs on the device's single autograd thread, where one waiting rank would
block the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

TIMEOUT_S = 300


class _Meeting:
    def __init__(self, world: int):
        self.world = world
        self.turn = threading.Condition()
        self.slots: list[dict[int, torch.Tensor]] = []
        self.failed = False


class ThreadChain:
    """SampleChain's gather and local, for a rank of run_ranks."""

    def __init__(self, meeting: _Meeting, rank: int):
        self.meeting, self.world, self.rank = meeting, meeting.world, rank
        self.gathers = 0

    def local(self, t: torch.Tensor) -> torch.Tensor:
        n = t.shape[1] // self.world
        return t[:, self.rank * n:(self.rank + 1) * n]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        # Called with the meeting's lock held (run_ranks); waiting releases it to the others.
        meeting = self.meeting
        if self.gathers == len(meeting.slots):
            meeting.slots.append({})
        slot = meeting.slots[self.gathers]
        self.gathers += 1
        slot[self.rank] = t.clone()
        meeting.turn.notify_all()
        if not meeting.turn.wait_for(lambda: len(slot) == self.world or meeting.failed,
                                     timeout=TIMEOUT_S):
            raise TimeoutError("a rank never reached the gather")
        if meeting.failed:
            raise RuntimeError("another rank failed")
        return torch.cat([slot[r] for r in range(self.world)], dim=1)


def run_ranks(world: int, fn: Callable[[int, Any], Any]) -> list[Any]:
    """fn(rank, chain) on `world` threads, one running at a time; their results in rank
    order (the first error raised again)."""
    meeting = _Meeting(world)
    results: list[Any] = [None] * world
    errors: list[BaseException] = []

    def body(rank: int) -> None:
        with meeting.turn:
            try:
                results[rank] = fn(rank, ThreadChain(meeting, rank))
            except BaseException as err:   # wake the others, report it below
                errors.append(err)
                meeting.failed = True
                meeting.turn.notify_all()

    threads = [threading.Thread(target=body, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


class _Ctx:
    """What the Online Norm Functions use of an autograd context."""

    needs_input_grad = (True, True, True)

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        self.saved_tensors = tensors


def call_function(function: Any, args: tuple, grad: torch.Tensor) -> tuple:
    """function's forward on args, then its backward on grad, outside the autograd engine:
    (output, grad_x, grad_weight, grad_bias)."""
    ctx = _Ctx()
    with torch.no_grad():
        out = function.forward(ctx, *args)
        grads = function.backward(ctx, grad)
    return (out, *grads[:3])
