"""Synchronized normalizers: two gloo processes on 8 + 8 samples train exactly as one on 16.

A small ResNet takes a few SGD steps on one global batch of 16, split in rank order. With
norms.convert_sync_norms every output, input and parameter gradient, weight and state buffer
matches one process to 1e-5 relative error; without it batch norm and Online Norm compute
something else (shown too). Eval mode and per-sample normalizers need nothing.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import norms
from trainers.models import build_cifar_resnet

WORLD, BATCH, STEPS = 2, 16, 3
NORMS = {"batch": ("batch", {}), "online ls": ("online", {"ecm": "ls"}),
         "online none": ("online", {"ecm": "none"})}
TOL = 1e-5


def make_model(mode: str, options: dict) -> nn.Module:
    torch.manual_seed(0)
    factory = norms.norm_factory(mode, alpha_fwd=0.9, alpha_bkw=0.8, **options)
    return build_cifar_resnet(8, 10, factory).double()


def batches():
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        yield (torch.randn(BATCH, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 + 0.5,
               torch.randint(0, 10, (BATCH,), generator=gen))


def train_steps(model: nn.Module, rank: int = 0, world: int = 1) -> list[dict]:
    """Per step: this process's logits and input gradient (at one-device scale), the averaged
    parameter gradients, then the weights and buffers after the SGD step."""
    net = model if world == 1 else nn.parallel.DistributedDataParallel(
        model, forward_sync_buffers=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    local = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    record = []
    for x, y in batches():
        x = x[local].clone().requires_grad_()
        logits = net(x)
        loss = nn.functional.cross_entropy(logits, y[local])
        optimizer.zero_grad()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
        record.append({"logits": logits.detach(), "grad_x": x.grad / world,
                       "grads": grads,
                       "state": {k: v.clone() for k, v in model.state_dict().items()}})
    return record


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {}
        for label, (mode, options) in NORMS.items():
            for synced in (True, False):
                model = make_model(mode, options)
                if synced:
                    model = norms.convert_sync_norms(model)
                results[(label, synced)] = train_steps(model, rank, WORLD)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process():
    return {label: train_steps(make_model(mode, options))
            for label, (mode, options) in NORMS.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def worst(ranks_record, reference) -> float:
    """Largest relative error over every step, quantity and rank."""
    errors = []
    for rank, record in enumerate(ranks_record):
        local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        for got, want in zip(record, reference):
            errors.append(rel_err(got["logits"], want["logits"][local]))
            errors.append(rel_err(got["grad_x"], want["grad_x"][local]))
            errors += [rel_err(got["grads"][k], want["grads"][k]) for k in want["grads"]]
            errors += [rel_err(got["state"][k].double(), want["state"][k].double())
                       for k in want["state"] if want["state"][k].is_floating_point()]
    return max(errors)


@pytest.mark.parametrize("label", sorted(NORMS))
def test_synchronized_ranks_train_exactly_as_one_process(label, two_ranks, one_process):
    records = [rank[(label, True)] for rank in two_ranks]
    assert worst(records, one_process[label]) < TOL
    # and the state buffers are identical on both ranks, bit for bit
    for k, value in records[0][-1]["state"].items():
        assert torch.equal(value, records[1][-1]["state"][k]), k


@pytest.mark.parametrize("label", sorted(NORMS))
def test_without_synchronization_the_ranks_compute_something_else(label, two_ranks,
                                                                  one_process):
    records = [rank[(label, False)] for rank in two_ranks]
    assert worst(records, one_process[label]) > 1e-3


def test_conversion_keeps_the_state_dict_and_eval_outputs():
    model = make_model("batch", {}).eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    before, keys = model(x), set(model.state_dict())
    converted = norms.convert_sync_norms(model)
    assert set(converted.state_dict()) == keys
    assert any(isinstance(m, norms.SyncBatchNorm2d) for m in converted.modules())
    assert torch.equal(converted.eval()(x), before)   # eval: the running statistics as they are
