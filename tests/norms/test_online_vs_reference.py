"""OnlineNorm1d/2d against the sample-by-sample reference: outputs, gradients, state, eval."""

from __future__ import annotations

import pytest
import torch
from devices import CUDA, DEVICES
from online_reference import ReferenceOnlineNorm

from norms import OnlineNorm1d, OnlineNorm2d, recurrences

TOL = 1e-5


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


def run_against_reference(shape: tuple[int, ...], ecm: str = "ls", affine: bool = True,
                          alpha_fwd: float = 0.9, alpha_bkw: float = 0.8, scale: float = 1.0,
                          iterations: int = 3, clamp_val: float = 1.5,
                          seed: int = 0, device: str = "cpu",
                          impl: str = "auto") -> ReferenceOnlineNorm:
    """Trains the layer (implementation `impl`) on `device` and the float64 reference on
    the CPU, side by side."""
    gen = torch.Generator().manual_seed(seed)
    channels = shape[1]
    layer_cls = OnlineNorm2d if len(shape) == 4 else OnlineNorm1d
    layer = layer_cls(channels, alpha_fwd=alpha_fwd, alpha_bkw=alpha_bkw, affine=affine,
                      ecm=ecm, clamp_val=clamp_val, impl=impl)
    if affine:
        with torch.no_grad():  # non-trivial affine so its gradients and folding are exercised
            layer.weight.copy_(1 + 0.5 * torch.randn(channels, generator=gen))
            layer.bias.copy_(0.5 * torch.randn(channels, generator=gen))
    ref = ReferenceOnlineNorm(channels, alpha_fwd, alpha_bkw, weight=layer.weight,
                              bias=layer.bias, ecm=ecm, clamp_val=clamp_val)
    layer.to(device)

    def on_device(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device)

    def on_host(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu()

    as4d = (lambda t: t) if len(shape) == 4 else (lambda t: t[:, :, None, None])
    for it in range(iterations):
        # A per-channel offset and scale so the running statistics matter.
        offset = torch.randn(channels, generator=gen, dtype=torch.float64)
        view = (1, channels) + (1,) * (len(shape) - 2)
        noise = torch.randn(shape, generator=gen, dtype=torch.float64)
        x = scale * noise * (1 + offset.abs()).view(view) + offset.view(view)
        grad_out = torch.randn(shape, generator=gen, dtype=torch.float64)
        x_dev = on_device(x).requires_grad_()
        layer.train()
        if affine:
            layer.weight.grad = layer.bias.grad = None
        out = layer(x_dev)
        assert out.device == x_dev.device
        out.backward(on_device(grad_out))
        expected = ref.train_step(as4d(x), as4d(grad_out))
        where = f"iteration {it}"
        assert rel_err(as4d(on_host(out)), expected["out"]) < TOL, where
        assert rel_err(as4d(on_host(x_dev.grad)), expected["grad_x"]) < TOL, where
        if affine:
            assert rel_err(on_host(layer.weight.grad), expected["grad_weight"]) < TOL, where
            assert rel_err(on_host(layer.bias.grad), expected["grad_bias"]) < TOL, where
        for name, value in ref.buffers().items():
            buf = getattr(layer, name)
            assert buf.dtype == torch.float32 and buf.device == x_dev.device
            assert rel_err(on_host(buf), value) < TOL, f"{where}: buffer {name}"
        layer.eval()
        before = {k: getattr(layer, k).clone() for k in ("m", "var", "u", "v")}
        with torch.no_grad():
            evaluated = on_host(layer(on_device(x)))
            assert rel_err(as4d(evaluated), ref.eval_forward(as4d(x))) < TOL, where
        for name, value in before.items():
            assert torch.equal(getattr(layer, name), value), f"eval changed {name}"
    return ref


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
