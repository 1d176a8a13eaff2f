"""OnlineNorm1d/2d against the sample-by-sample reference: outputs, gradients, state, eval."""

from __future__ import annotations

import pytest
import torch
from devices import CUDA, DEVICES
from norm_helpers import rel_err, run_against_reference

from norms import OnlineNorm1d, OnlineNorm2d, recurrences


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ecm", ["ls", "ac", "none"])
@pytest.mark.parametrize("affine", [True, False])
def test_ecm_and_affine(ecm: str, affine: bool, device: str) -> None:
    run_against_reference((7, 3, 3, 5), ecm=ecm, affine=affine, device=device)


@pytest.mark.parametrize("shape", [(1, 4, 3, 5), (2, 3, 8, 8), (7, 5, 1, 1), (256, 3, 3, 5),
                                   (256, 2, 1, 1)])
@pytest.mark.parametrize("device", DEVICES)
def test_batch_and_spatial_sizes(shape: tuple[int, ...], device: str) -> None:
    run_against_reference(shape, device=device)


@pytest.mark.parametrize("alpha_fwd,alpha_bkw", [(1 - 2 ** -1, 1 - 2 ** -12),
                                                 (1 - 2 ** -12, 1 - 2 ** -1),
                                                 (1 - 2 ** -12, 1 - 2 ** -12),
                                                 (0.999, 0.99)])
@pytest.mark.parametrize("device", DEVICES)
def test_decay_factors(alpha_fwd: float, alpha_bkw: float, device: str) -> None:
    run_against_reference((16, 3, 3, 5), alpha_fwd=alpha_fwd, alpha_bkw=alpha_bkw,
                          device=device)


@pytest.fixture(params=["products", "scan"])
def v_recurrence(request, monkeypatch) -> list[int]:
    """Run v's recurrence by cumulative products (CPU's usual path) or force the log-depth
    scan (CUDA's only path, and CPU's when products leave float64's range); the returned
    list counts the scan's calls."""
    calls: list[int] = []
    scan = recurrences.varying_decay_scan

    def counted(*args):
        calls.append(1)
        return scan(*args)
    monkeypatch.setattr(recurrences, "varying_decay_scan", counted)
    if request.param == "scan":
        monkeypatch.setattr(recurrences, "_PRODUCT_RANGE", 1.0)   # no product is in range
    yield calls
    assert bool(calls) == (request.param == "scan")


@pytest.mark.parametrize("ecm", ["ls", "none"])
def test_negative_v_coefficient(ecm: str, v_recurrence: list[int]) -> None:
    # Inputs far larger than the initial variance of 1: E[y^2] >> 1/(1-b), so v's per-sample
    # coefficient 1 - (1-b)*E[y^2] is negative and the scan must not take logs or divide.
    ref = run_against_reference((16, 3, 4, 4), ecm=ecm, alpha_fwd=0.999, alpha_bkw=0.5,
                                scale=1.2)
    assert ref.min_v_coef < 0
    assert all(torch.isfinite(t).all() for t in ref.buffers().values())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ecm", ["ls", "ac", "none"])
@pytest.mark.parametrize("batch", [1, 7, 256])
def test_online_norm_1d(ecm: str, batch: int, device: str) -> None:
    run_against_reference((batch, 6), ecm=ecm, device=device)


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("shape", [(16, 3, 4, 4), (16, 4)])
def test_negative_v_coefficient_on_cuda_takes_the_scan(shape, device, monkeypatch) -> None:
    # The eager path on CUDA ('auto' runs the Triton kernels there).
    calls: list[int] = []
    scan = recurrences.varying_decay_scan
    monkeypatch.setattr(recurrences, "varying_decay_scan",
                        lambda *args: calls.append(1) or scan(*args))
    ref = run_against_reference(shape, ecm="ls", alpha_fwd=0.999, alpha_bkw=0.5, scale=1.2,
                                device=device, impl="eager")
    assert ref.min_v_coef < 0 and len(calls) == 3   # one backward per iteration


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("impl", ["eager", "triton"])
@pytest.mark.parametrize("shape,dtype", [((16, 8, 4, 4), torch.float32),
                                         ((16, 8, 4, 4), torch.float16), ((16, 8), torch.float32)])
@pytest.mark.parametrize("ecm", ["ls", "ac", "none"])
def test_cuda_step_never_waits_for_the_device(ecm, shape, dtype, impl, device) -> None:
    # No host-device synchronization anywhere in a CUDA training step: the host can run
    # ahead of the GPU, and the step could be captured in a CUDA graph.
    layer = (OnlineNorm2d if len(shape) == 4 else OnlineNorm1d)(shape[1], ecm=ecm, impl=impl)
    layer = layer.to(device)
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x)
    layer(x).backward(grad)       # first call fills the caches (decay powers, constants)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer(x).backward(grad)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x.grad).all()


def test_1d_negative_coefficient(v_recurrence: list[int]) -> None:
    ref = run_against_reference((16, 4), ecm="none", alpha_fwd=0.999, alpha_bkw=0.5, scale=1.2)
    assert ref.min_v_coef < 0
    assert all(torch.isfinite(t).all() for t in ref.buffers().values())


@pytest.mark.parametrize("ecm", ["ls", "ac", "none"])
def test_float64_parameters_agree_and_stay_untouched_by_backward(ecm: str) -> None:
    # .double() makes the parameters float64: any in-place op on a float64 "copy" of them
    # would then silently modify the parameters themselves.
    gen = torch.Generator().manual_seed(5)
    twin32 = OnlineNorm2d(6, alpha_fwd=0.9, alpha_bkw=0.8, ecm=ecm, clamp_val=1.5)
    with torch.no_grad():
        twin32.weight.copy_(1 + 0.5 * torch.randn(6, generator=gen))
        twin32.bias.copy_(0.5 * torch.randn(6, generator=gen))
    twin64 = OnlineNorm2d(6, alpha_fwd=0.9, alpha_bkw=0.8, ecm=ecm, clamp_val=1.5)
    twin64.load_state_dict(twin32.state_dict())
    twin64.double()
    weight0, bias0 = twin64.weight.detach().clone(), twin64.bias.detach().clone()
    for _ in range(3):
        x = torch.randn(4, 6, 5, 5, generator=gen, dtype=torch.float64)
        grad = torch.randn(4, 6, 5, 5, generator=gen, dtype=torch.float64)
        outs = []
        for layer in (twin32, twin64):
            xi = x.clone().requires_grad_()
            out = layer(xi)
            out.backward(grad)
            outs.append((out.detach(), xi.grad))
        assert torch.equal(twin64.weight, weight0) and torch.equal(twin64.bias, bias0)
        assert rel_err(outs[1][0], outs[0][0]) < 1e-6
        assert rel_err(outs[1][1], outs[0][1]) < 1e-6
