"""The chain over ranks (norms.sample_chain) of the Triton path, inside one process.

K ranks, each on its slice of a global batch with its gradient at rank scale (K times the
one-device one: each rank's loss is the mean over its own slice), compute what one process
computes on the whole batch: outputs, input gradients (divided by K), affine gradients
(averaged over the ranks, as DDP does) and state buffers, the buffers bit for bit alike on
every rank; and what the eager op's chain computes. The ranks are threads here, calling the
Functions' forward and backward themselves (tests/norms/chains.py), so that they also run on
one CUDA device; tests/norms/test_sync.py runs them as processes, through the layers.
"""

from __future__ import annotations

import threading

import pytest
import torch
from chains import call_function, run_ranks
from devices import TRITON, TRITON_DEVICES
from norm_helpers import nan_padded, rel_err

from norms.online_inputs import OnlineNormConstants, OnlineNormState

pytestmark = pytest.mark.skipif(not TRITON, reason="triton is not installed")
ALPHA_FWD, ALPHA_BKW, EPS, LS_EPS, CLAMP = 0.9, 0.8, 1e-5, 1e-5, 1.5
TOL = 1e-10   # float64 throughout


def functions():
    from norms.online_function import OnlineNormFunction
    from norms.online_triton import OnlineNormTritonFunction
    return {"triton": OnlineNormTritonFunction, "eager": OnlineNormFunction}


def make_problem(shape, steps, affine, seed=0):
    """Per step the global batch and its one-device gradient; parameters; state buffers."""
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    data = [(torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5,
             torch.randn(shape, generator=gen, dtype=torch.float64)) for _ in range(steps)]
    params = [1 + 0.3 * torch.randn(c, generator=gen, dtype=torch.float64),
              0.3 * torch.randn(c, generator=gen, dtype=torch.float64)] if affine else None
    state = [0.3 * torch.randn(c, generator=gen, dtype=torch.float64),
             1 + torch.rand(c, generator=gen, dtype=torch.float64),
             0.1 * torch.randn(c, generator=gen, dtype=torch.float64),
             0.1 * torch.randn(c, generator=gen, dtype=torch.float64)]
    return data, params, state


def train(function, problem, ecm, device, chain=None, world=1, rank=0):
    """The steps on rank `rank`'s slice: per step its output, input gradient at one-device
    scale, affine gradients at rank scale and the buffers after the step. With a chain the
    Function's forward and backward are called directly (chains.call_function)."""
    data, params, state = problem
    w, b = (p.to(device, copy=True) for p in params) if params else (None, None)
    buffers = [t.to(device, copy=True) for t in state]
    records = []
    for x_all, g_all in data:
        n = x_all.shape[0] // world
        x = x_all[rank * n:(rank + 1) * n].to(device, copy=True)
        g = world * g_all[rank * n:(rank + 1) * n].to(device)
        args = (x, w, b, OnlineNormState(*buffers),
                OnlineNormConstants(ALPHA_FWD, ALPHA_BKW, EPS, ecm, LS_EPS, CLAMP))
        if chain is None:
            x.requires_grad_()
            wb = [p.detach().requires_grad_() for p in (w, b)] if params else [None, None]
            out = function.apply(x, *wb, *args[3:])
            out.backward(g)
            out, grad_x, grad_w, grad_b = out.detach(), x.grad, wb[0], wb[1]
            if params:
                grad_w, grad_b = grad_w.grad, grad_b.grad
        else:
            out, grad_x, grad_w, grad_b = call_function(function, (*args, chain), g)
        record = {"out": out, "grad_x": grad_x / world, "buffers": torch.stack(buffers).clone()}
        if params:
            record.update(grad_w=grad_w, grad_b=grad_b)
        records.append({k: v.cpu() for k, v in record.items()})
        if chain is not None:
            records[-1]["gathers"] = chain.gathers
    return records


def compare(ranks, one):
    """The ranks' records against one process's: the largest relative error."""
    errors = []
    for step, want in enumerate(one):
        got = [r[step] for r in ranks]
        errors.append(rel_err(torch.cat([g["out"] for g in got]), want["out"]))
        errors.append(rel_err(torch.cat([g["grad_x"] for g in got]), want["grad_x"]))
        errors += [rel_err(g["buffers"], want["buffers"]) for g in got]
        for key in ("grad_w", "grad_b"):
            if key in want:   # DDP's average of the ranks' own
                errors.append(rel_err(sum(g[key] for g in got) / len(got), want[key]))
        for g in got[1:]:
            assert torch.equal(g["buffers"], got[0]["buffers"]), step
    return max(errors)


@pytest.fixture
def launches(monkeypatch) -> dict[int, list[str]]:
    """The Triton path's kernel launches, by thread (rank)."""
    from norms import online_triton
    recorded: dict[int, list[str]] = {}
    launch = online_triton._launch

    def recording(kernel, grid, *args, **meta):
        recorded.setdefault(threading.get_ident(), []).append(kernel.fn.__name__)
        launch(kernel, grid, *args, **meta)
    monkeypatch.setattr(online_triton, "_launch", recording)
    return recorded


def chained(name, problem, ecm, world, device):
    function = functions()[name]
    return run_ranks(world, lambda rank, chain: train(function, problem, ecm, device, chain,
                                                      world, rank))


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("ecm,affine,world,spatial", [
    ("ls", True, 2, (2, 3)), ("ac", True, 3, (2, 3)), ("none", False, 2, (1, 1))])
def test_ranks_compute_what_one_process_computes(ecm, affine, world, spatial, device,
                                                 launches) -> None:
    # (1, 1): as an OnlineNorm1d layer's input.
    problem = make_problem((3 * world, 3, *spatial), 2, affine)
    ranks = chained("triton", problem, ecm, world, device)
    # Four launches and one gather each way, whatever the ecm: chain_terms (which computes
    # layer scaling's k as well) takes grad_layer_scale's place.
    forward = ["spatial_sums_kernel", "forward_scan_kernel"] + (
        ["layer_scale_kernel"] if ecm == "ls" else []) + ["scale_shift_kernel"]
    backward = ["grad_sums_kernel", "chain_terms_kernel", "backward_scan_kernel",
                "combine_kernel"]
    assert list(launches.values()) == [(forward + backward) * 2] * world
    assert [rank[-1]["gathers"] for rank in ranks] == [2 * 2] * world
    assert compare(ranks, train(functions()["eager"], problem, ecm, device)) < TOL
    eager_ranks = chained("eager", problem, ecm, world, device)
    for got, want in zip(ranks, eager_ranks):   # the eager chain, rank by rank
        for step_got, step_want in zip(got, want):
            for key in step_want.keys() - {"gathers"}:
                assert rel_err(step_got[key], step_want[key]) < TOL, key


TINY = {"PASS_TILE": 4, "SUM_TILE": 2, "TARGET_PROGRAMS": 10 ** 6, "MAX_SPLIT": 2,
        "SCAN_TILE": 2, "MAX_SCAN_ROWS": 4, "LS_ROWS": 2, "LS_COLS": 1}


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_ranks_across_scan_chunks_read_only_what_was_written(monkeypatch, device) -> None:
    # 2 ranks of 3 samples scanned in chunks of 4: the first chunk holds both ranks', the
    # second a part of a chunk; reductions split over programs; 2 channel blocks; per-sample
    # kernels over 2 row blocks and 2 channel steps; and every buffer the Triton path
    # allocates inside NaN (tests/norms/test_online_triton.py's guards).
    from norms import online_triton
    for name, value in TINY.items():
        monkeypatch.setattr(online_triton, name, value)
    monkeypatch.setattr(online_triton, "_empty", lambda shape, dtype, device: nan_padded(
        shape, torch.empty(shape).stride(), dtype, device))
    monkeypatch.setattr(online_triton, "_empty_like", lambda t: nan_padded(
        t.shape, torch.empty_like(t).stride(), t.dtype, t.device))
    problem = make_problem((6, 2, 1, 3), 1, True, seed=1)
    one = train(functions()["eager"], problem, "ls", device)
    assert compare(chained("triton", problem, "ls", 2, device), one) < TOL
