"""Synchronized normalizers: two gloo processes on 8 + 8 samples train exactly as one on 16.

A small ResNet takes a few SGD steps on one global batch of 16, split in rank order. With
norms.convert_sync_norms every output, input and parameter gradient, weight and state buffer
matches one process to 1e-5 relative error; without it batch norm and Online Norm compute
something else (shown too). Eval mode and per-sample normalizers need nothing.

The ResNet's Online Norm runs the eager op (CPU tensors); a tiny conv net runs its Online
Norm on the Triton kernels' chain as well: under Triton's interpreter in the same gloo
processes (which inherit TRITON_INTERPRET=1 from this one, tests/norms/conftest.py), and
compiled, on two GPUs over NCCL, where a machine has them.
"""

from __future__ import annotations

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from devices import TRITON, TRITON_INTERPRETER
from norm_helpers import rel_err
from torch import nn

import norms
from norms.sync import Synchronizable
from trainers.models import build_cifar_resnet

WORLD, BATCH, STEPS = 2, 16, 3
NORMS = {"batch": ("batch", {}), "online ls": ("online", {"ecm": "ls"}),
         "online none": ("online", {"ecm": "none"})}
TOL = 1e-5


# The tiny net's Online Norm, per case: (ecm, impl).
TRITON_NETS = {f"{ecm} {impl}": (ecm, impl) for ecm in ("ls", "none")
               for impl in ("triton", "eager")}


def make_model(mode: str, options: dict) -> nn.Module:
    torch.manual_seed(0)
    factory = norms.norm_factory(mode, alpha_fwd=0.9, alpha_bkw=0.8, **options)
    return build_cifar_resnet(8, 10, factory).double()


def make_net(ecm: str, impl: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1),
                         norms.OnlineNorm2d(4, alpha_fwd=0.9, alpha_bkw=0.8, ecm=ecm, impl=impl),
                         nn.ReLU(), nn.AvgPool2d(4), nn.Flatten(), nn.Linear(16, 10)).double()


def train_net(ecm: str, impl: str, device: str = "cpu", synced: bool = False, rank: int = 0,
              world: int = 1) -> list[dict]:
    """train_steps of the tiny net, with its Online Norm's outputs as well."""
    net = make_net(ecm, impl).to(device)
    if synced:
        net = norms.convert_sync_norms(net)
    outputs: list[torch.Tensor] = []
    net[1].register_forward_hook(lambda module, inputs, out: outputs.append(out.detach()))
    record = train_steps(net, rank, world, device, steps=2)   # interpreted: slow
    for step, out in zip(record, outputs):
        step["norm_out"] = out
    return [{k: _to_cpu(v) for k, v in step.items()} for step in record]


def _to_cpu(value):
    if isinstance(value, dict):
        return {k: v.cpu() for k, v in value.items()}
    return value.cpu()


def batches(steps: int = STEPS):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        yield (torch.randn(BATCH, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 + 0.5,
               torch.randint(0, 10, (BATCH,), generator=gen))


def train_steps(model: nn.Module, rank: int = 0, world: int = 1, device: str = "cpu",
                steps: int = STEPS) -> list[dict]:
    """Per step: this process's logits and input gradient (at one-device scale), the averaged
    parameter gradients, then the weights and buffers after the SGD step."""
    net = model if world == 1 else nn.parallel.DistributedDataParallel(
        model, device_ids=[torch.device(device).index] if device != "cpu" else None,
        forward_sync_buffers=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    local = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    record = []
    for x, y in batches(steps):
        x = x[local].to(device, copy=True).requires_grad_()
        logits = net(x)
        loss = nn.functional.cross_entropy(logits, y[local].to(device))
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
    # a minute, not gloo's default half hour, if the other rank never comes
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        results = {}
        for label, (mode, options) in NORMS.items():
            for synced in (True, False):
                model = make_model(mode, options)
                if synced:
                    model = norms.convert_sync_norms(model)
                results[(label, synced)] = train_steps(model, rank, WORLD)
        if TRITON_INTERPRETER:   # the Triton kernels' chain, interpreted on CPU tensors
            from norms import triton_kernels
            results["interpreted"] = (os.environ.get("TRITON_INTERPRET"),
                                      triton_kernels.INTERPRETED)
            for label, (ecm, impl) in TRITON_NETS.items():
                results[label] = train_net(ecm, impl, synced=True, rank=rank, world=WORLD)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def nccl_worker(rank: int, port: int, out_dir: str) -> None:
    """The tiny nets' synchronized steps on GPU `rank` over NCCL (one rank per GPU)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=WORLD,
                            device_id=torch.device("cuda", rank))
    try:
        results = {label: train_net(ecm, impl, f"cuda:{rank}", synced=True, rank=rank,
                                    world=WORLD)
                   for label, (ecm, impl) in TRITON_NETS.items()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Rank 0 runs in this process and rank 1 in a fresh one: a new interpreter's imports are
    most of what a rank costs, and one is enough to be a second process."""
    out = tmp_path_factory.mktemp("ranks")
    port = free_port()
    other = mp.get_context("spawn").Process(target=worker, args=(1, port, str(out)))
    other.start()
    threads = torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as env:   # worker sets them; restored after
            env.delenv("MASTER_ADDR", raising=False)
            env.delenv("MASTER_PORT", raising=False)
            worker(0, port, str(out))
    finally:
        torch.set_num_threads(threads)
        other.join(timeout=120)
        if other.exitcode is None:
            other.kill()
            other.join()
    assert other.exitcode == 0, f"rank 1 exited with {other.exitcode}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process():
    return {label: train_steps(make_model(mode, options))
            for label, (mode, options) in NORMS.items()}


CUDA_RANKS = pytest.param("cuda", marks=pytest.mark.skipif(
    not (TRITON and torch.cuda.device_count() >= WORLD),
    reason="NCCL runs one rank per GPU: needs 2 GPUs (and triton)"))
INTERPRETED_RANKS = pytest.param("cpu", marks=pytest.mark.skipif(
    not TRITON_INTERPRETER, reason="Triton on CPU tensors: only in its interpreter, where "
    "no CUDA device is (and triton is installed)"))


@pytest.fixture(scope="module", params=[INTERPRETED_RANKS, CUDA_RANKS])
def triton_ranks(request, tmp_path_factory):
    """(device, each rank's records of the tiny nets, one process's with impl='triton')."""
    device = request.param
    if device == "cpu":
        ranks = request.getfixturevalue("two_ranks")
        assert all(rank["interpreted"] == ("1", True) for rank in ranks)
    else:
        out = tmp_path_factory.mktemp("nccl")
        mp.spawn(nccl_worker, args=(free_port(), str(out)), nprocs=WORLD)
        ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    dev = "cuda:0" if device == "cuda" else "cpu"
    one = {ecm: train_net(ecm, "triton", dev) for ecm in ("ls", "none")}
    return device, ranks, one


def worst(ranks_record, reference) -> float:
    """Largest relative error over every step, quantity and rank."""
    errors = []
    for rank, record in enumerate(ranks_record):
        local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        for got, want in zip(record, reference):
            errors.append(rel_err(got["logits"], want["logits"][local]))
            if "norm_out" in want:
                errors.append(rel_err(got["norm_out"], want["norm_out"][local]))
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


class _SwitchesInPlace(nn.Module):
    """A plugin normalizer offering the synchronize hook, switching itself."""

    def __init__(self):
        super().__init__()
        self.inner = nn.BatchNorm2d(2)   # its own: the hook decides, nothing converts it
        self.groups: list[object] = []

    def synchronize(self, process_group):
        self.groups.append(process_group)


class _Replaced(nn.Module):
    """A plugin normalizer whose hook returns the module to use in its place."""

    def __init__(self):
        super().__init__()
        self.replacement = nn.GroupNorm(1, 2)
        self.groups: list[object] = []

    def synchronize(self, process_group):
        self.groups.append(process_group)
        return self.replacement


def test_every_layer_offering_the_hook_gets_the_process_group():
    group = object()   # convert_sync_norms passes it on, whatever it is
    in_place, replaced = _SwitchesInPlace(), _Replaced()
    online = norms.OnlineNorm2d(2)
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Sequential(in_place, replaced), online,
                          nn.BatchNorm2d(2))
    converted = norms.convert_sync_norms(model, group)
    assert converted is model
    assert in_place.groups == [group] and replaced.groups == [group]
    assert model[1][0] is in_place and model[1][1] is replaced.replacement
    assert type(in_place.inner) is nn.BatchNorm2d   # a hook's layer is left to its hook
    assert online.synchronized and online.process_group is group
    assert isinstance(model[3], norms.SyncBatchNorm2d) and model[3].process_group is group
    assert isinstance(online, Synchronizable) and not isinstance(model[0], Synchronizable)


def test_a_layer_offering_the_hook_may_be_the_root():
    replaced = _Replaced()
    assert norms.convert_sync_norms(replaced) is replaced.replacement
    assert replaced.groups == [None]   # torch.distributed's default group


@pytest.mark.parametrize("ecm", ["ls", "none"])
def test_the_triton_chain_trains_exactly_as_one_process(ecm, triton_ranks):
    # A synchronized Online Norm on the Triton path uses its kernels (not the eager op) and
    # matches one process on the whole batch with impl='triton', and the eager chain.
    device, ranks, one = triton_ranks
    triton = [rank[f"{ecm} triton"] for rank in ranks]
    assert worst(triton, one[ecm]) < TOL
    eager = [rank[f"{ecm} eager"] for rank in ranks]
    for got, want in zip(triton, eager):
        for step_got, step_want in zip(got, want):
            for key in ("logits", "grad_x", "norm_out"):
                assert rel_err(step_got[key], step_want[key]) < TOL, key
            for group in ("grads", "state"):
                for name, value in step_want[group].items():
                    if value.is_floating_point():
                        assert rel_err(step_got[group][name], value) < TOL, name
    for k, value in triton[0][-1]["state"].items():
        assert torch.equal(value, triton[1][-1]["state"][k]), k


@pytest.mark.skipif(not TRITON, reason="triton is not installed")
def test_a_synchronized_layer_runs_the_function_its_impl_picks(monkeypatch):
    # Without process groups: a stand-in chain, to see which Function gets it. (On CUDA
    # 'auto' picks the Triton kernels too: test_online_triton's device cases.)
    from norms import impl as impl_module
    from norms.online_function import OnlineNormFunction
    from norms.online_triton import OnlineNormTritonFunction
    calls = []
    monkeypatch.setattr(impl_module, "triton_runs_on", lambda device: True)   # nothing runs
    monkeypatch.setattr(norms.OnlineNorm2d, "_chain", lambda self: "chain")
    for name, function in (("triton", OnlineNormTritonFunction), ("eager", OnlineNormFunction)):
        monkeypatch.setattr(function, "apply",
                            lambda *args, name=name: calls.append((name, args[-1])))
    x = torch.randn(2, 3, 4, 4)
    for impl in ("auto", "eager", "triton"):
        norms.OnlineNorm2d(3, impl=impl)(x)
    assert calls == [("eager", "chain"), ("eager", "chain"), ("triton", "chain")]


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_the_cpu_sync_batch_norm_in_float32_matches_float64(offset, tmp_path):
    # The CPU SyncBatchNorm2d passes over float32 activations in float32 and combines the
    # ranks' statistics in float64 (var_mean per rank, then the spread of the means): on
    # activations whose mean is 1000 standard deviations away (where E[x^2] - mean^2 in
    # float32 would lose every digit) it matches a float64 batch norm of the same float32
    # input to float32's own precision at that offset. One gloo rank runs the function.
    from norms.sync import _SyncBatchNormFunction

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    try:
        torch.manual_seed(0)
        x = (torch.randn(8, 4, 5, 5) * 2 + offset).requires_grad_()
        weight = torch.rand(4, requires_grad=True)
        bias = torch.randn(4, requires_grad=True)
        running = torch.zeros(4), torch.ones(4)
        out = _SyncBatchNormFunction.apply(x, weight, bias, *running, 1e-5, 0.1, None)
        dy = torch.randn_like(out)
        out.backward(dy)

        x64 = x.detach().double().requires_grad_()
        w64 = weight.detach().double().requires_grad_()
        b64 = bias.detach().double().requires_grad_()
        ref_running = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
        ref = nn.functional.batch_norm(x64, *ref_running, w64, b64, training=True,
                                       momentum=0.1, eps=1e-5)
        ref.backward(dy.double())
    finally:
        dist.destroy_process_group()
    # float32 rounds x itself by ~6e-8 * |x|: that, relative to the unit spread, is the floor
    tol = 1e-5 + 2e-7 * offset
    assert out.dtype == x.grad.dtype == torch.float32
    assert (out.double() - ref).abs().max() < tol
    assert (x.grad.double() - x64.grad).abs().max() < tol
    assert torch.allclose(weight.grad.double(), w64.grad, rtol=1e-5, atol=tol)
    assert torch.allclose(bias.grad.double(), b64.grad, rtol=1e-5, atol=1e-5)
    assert torch.allclose(running[0].double(), ref_running[0], rtol=1e-6, atol=1e-6)
    assert torch.allclose(running[1].double(), ref_running[1], rtol=1e-5)
