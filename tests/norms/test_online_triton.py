"""The Triton path (impl='triton') against the float64 sample-by-sample reference and the
eager layers: on CUDA compiled, on CPU tensors in Triton's interpreter (tests/devices.py).

A representative subset of the eager path's cases, kept small: the interpreter runs every
program of every kernel in Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from devices import CUDA, TRITON, TRITON_DEVICES, TRITON_INTERPRETER
from norm_helpers import (
    CLAMP,
    cancellation_errors,
    nan_padded,
    rel_err,
    run_against_reference,
    train_steps,
)
from torch import nn

import norms
from norms import OnlineNorm1d, OnlineNorm2d

pytestmark = pytest.mark.skipif(not TRITON, reason="triton is not installed")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("ecm", ["ls", "ac", "none"])
@pytest.mark.parametrize("affine", [True, False])
def test_ecm_and_affine(ecm: str, affine: bool, device: str) -> None:
    run_against_reference((7, 3, 3, 5), ecm=ecm, affine=affine, device=device, impl="triton")


@pytest.mark.parametrize("shape", [(1, 4, 3, 5), (2, 3, 8, 8), (7, 5, 1, 1), (256, 2, 1, 1)])
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_batch_and_spatial_sizes(shape: tuple[int, ...], device: str) -> None:
    run_against_reference(shape, device=device, impl="triton")


@pytest.mark.parametrize("alpha_fwd,alpha_bkw", [(1 - 2 ** -1, 1 - 2 ** -12),
                                                 (1 - 2 ** -12, 1 - 2 ** -1)])
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_decay_factors(alpha_fwd: float, alpha_bkw: float, device: str) -> None:
    run_against_reference((16, 3, 3, 5), alpha_fwd=alpha_fwd, alpha_bkw=alpha_bkw,
                          device=device, impl="triton")


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("shape,ecm", [((16, 3, 4, 4), "ls"), ((16, 3, 4, 4), "none"),
                                       ((16, 4), "none")])
def test_negative_v_coefficient(shape: tuple[int, ...], ecm: str, device: str) -> None:
    # Inputs far larger than the initial variance of 1 make v's per-sample coefficient
    # 1 - (1-b)*E[y^2] negative: the scan composes maps, with no logarithm or division.
    ref = run_against_reference(shape, ecm=ecm, alpha_fwd=0.999, alpha_bkw=0.5, scale=1.2,
                                device=device, impl="triton")
    assert ref.min_v_coef < 0
    assert all(torch.isfinite(t).all() for t in ref.buffers().values())


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("ecm,batch", [("ls", 1), ("ls", 7), ("ac", 7), ("none", 7)])
def test_online_norm_1d(ecm: str, batch: int, device: str) -> None:
    # (A batch of 256 runs the same kernels as test_batch_and_spatial_sizes' (256, 2, 1, 1).)
    run_against_reference((batch, 6), ecm=ecm, device=device, impl="triton")


@pytest.fixture
def launches(monkeypatch) -> list[tuple[str, dict]]:
    """Every kernel launch of the Triton path, as (kernel name, its constexpr options)."""
    from norms import online_triton
    recorded: list[tuple[str, dict]] = []
    launch = online_triton._launch

    def recording(kernel, grid, *args, **meta):
        recorded.append((kernel.fn.__name__, meta))
        launch(kernel, grid, *args, **meta)
    monkeypatch.setattr(online_triton, "_launch", recording)
    return recorded


@pytest.fixture
def tiny_tiles(monkeypatch, launches) -> list[tuple[str, dict]]:
    """Tiles, chunks and splits far smaller than the tensors, so that the multi-block paths
    run on small shapes (the interpreter's cost is per program): several channel and
    spatial blocks per sample, reductions split over programs that each loop over several
    chunks, batches scanned as several chunks with the state carried across, and the
    per-sample kernels over several row blocks and channel steps. Returns the launches."""
    from norms import online_triton
    for name, value in {"PASS_TILE": 4, "SUM_TILE": 2, "TARGET_PROGRAMS": 10 ** 6,
                        "MAX_SPLIT": 2, "SCAN_TILE": 2, "MAX_SCAN_ROWS": 2, "LS_ROWS": 2,
                        "LS_COLS": 2}.items():
        monkeypatch.setattr(online_triton, name, value)
    return launches


def _largest(launches: list[tuple[str, dict]], kernel: str, key: str) -> int:
    return max(meta[key] for name, meta in launches if name == kernel)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_tiles_smaller_than_the_tensor(device, tiny_tiles) -> None:
    # 3 samples in scan chunks of 2; 3 channels in blocks of 1; 5 positions in pass blocks
    # of 4 and reduction chunks of 2, the 3 chunks split in 2.
    run_against_reference((3, 3, 1, 5), ecm="ls", iterations=2, device=device,
                          impl="triton")
    assert _largest(tiny_tiles, "spatial_sums_kernel", "SPLIT") == 2
    assert _largest(tiny_tiles, "grad_sums_kernel", "SPLIT") == 2
    assert _largest(tiny_tiles, "scale_shift_kernel", "BLOCK_HW") == 4
    assert _largest(tiny_tiles, "backward_scan_kernel", "BLOCK_N") == 2


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_tiles_smaller_than_a_1d_batch(device, monkeypatch, tiny_tiles) -> None:
    # 5 samples in pass tiles of 2 samples x 8 channels (of 5), scanned in chunks of 2.
    from norms import online_triton
    monkeypatch.setattr(online_triton, "PASS_TILE", 16)
    run_against_reference((5, 5), ecm="ac", iterations=2, device=device, impl="triton")
    assert _largest(tiny_tiles, "scale_shift_kernel", "BLOCK_NS") == 2
    assert _largest(tiny_tiles, "combine_kernel", "BLOCK_NS") == 2


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_tiles_smaller_than_a_channels_last_tensor(device, monkeypatch, tiny_tiles) -> None:
    from norms import online_triton
    monkeypatch.setattr(online_triton, "PASS_TILE", 64)   # 4 channels x 16 positions
    monkeypatch.setattr(online_triton, "SUM_TILE", 16)    # 4 x 4, 8 chunks split in 2
    expected = train_steps(torch.float64, False, "ls", CLAMP, steps=2)
    actual = train_steps(torch.float32, True, "ls", CLAMP, steps=2, device=device,
                         impl="triton")
    for step, (got, want) in enumerate(zip(actual, expected)):
        assert got["out"].is_contiguous(memory_format=torch.channels_last)
        for key in want:
            assert rel_err(got[key], want[key]) < 1e-5, (step, key)
    assert _largest(tiny_tiles, "grad_sums_kernel", "SPLIT") == 2
    assert _largest(tiny_tiles, "scale_shift_kernel", "BLOCK_C") == 4


def _padded_copy(t: torch.Tensor) -> torch.Tensor:
    out = nan_padded(t.shape, t.stride(), t.dtype, t.device)
    return out.copy_(t)


@pytest.fixture
def nan_guards(monkeypatch) -> None:
    """Every buffer the Triton path allocates starts as NaN, with NaN around it."""
    from norms import online_triton
    monkeypatch.setattr(online_triton, "_empty", lambda shape, dtype, device: nan_padded(
        shape, torch.empty(shape).stride(), dtype, device))
    monkeypatch.setattr(online_triton, "_empty_like", lambda t: nan_padded(
        t.shape, torch.empty_like(t).stride(), t.dtype, t.device))


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("shape,ecm,affine,channels_last", [
    ((6, 3, 3, 4), "ls", True, False), ((6, 3, 3, 4), "ac", True, True),
    ((6, 3, 3, 4), "none", False, False), ((5, 4, 1, 1), "ls", True, False)])
def test_reads_only_what_was_written(shape, ecm, affine, channels_last, device,
                                     nan_guards) -> None:
    # Inputs, parameters, state and every kernel buffer sit inside NaN: a read of an
    # element nobody wrote, or past a buffer's ends (a shifted row at index -1, say),
    # would turn the results NaN. They must instead match the eager op.
    _check_guarded(shape, ecm, affine, channels_last, device)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_reads_only_what_was_written_in_tiny_tiles(device, nan_guards, tiny_tiles) -> None:
    _check_guarded((3, 3, 1, 5), "ls", True, False, device)
    assert _largest(tiny_tiles, "grad_sums_kernel", "SPLIT") == 2


def _check_guarded(shape, ecm, affine, channels_last, device) -> None:
    from norms.online_function import OnlineNormFunction
    from norms.online_inputs import OnlineNormConstants, OnlineNormState
    from norms.online_triton import OnlineNormTritonFunction
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(shape, generator=gen) * 2 + 1).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape, generator=gen).to(device)
    c = shape[1]
    params = [(1 + 0.3 * torch.randn(c, generator=gen)).to(device),
              (0.3 * torch.randn(c, generator=gen)).to(device)] if affine else [None, None]
    state = [torch.rand(c, generator=gen).to(device) for _ in range(4)]
    results = []
    for function, prepare in ((OnlineNormFunction, torch.clone),
                              (OnlineNormTritonFunction, _padded_copy)):
        xi = prepare(x).requires_grad_()
        wb = [prepare(p).requires_grad_() if p is not None else None for p in params]
        buffers = [prepare(t) for t in state]
        out = function.apply(xi, *wb, OnlineNormState(*buffers),
                             OnlineNormConstants(0.9, 0.8, 1e-5, ecm, 1e-5, 1.5))
        out.backward(prepare(grad))
        results.append([out.detach(), xi.grad, *buffers]
                       + ([wb[0].grad, wb[1].grad] if affine else []))
    for got, want in zip(results[1], results[0]):
        assert torch.isfinite(got).all()
        assert rel_err(got.cpu(), want.cpu()) < 1e-5


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("ecm", ["ls", "ac", "none"])
@pytest.mark.parametrize("dtype,channels_last,tol", [
    (torch.float32, True, 1e-5), (torch.float64, True, 1e-10), (torch.float16, False, 2e-2),
    (torch.bfloat16, True, 6e-2)])
def test_matches_float64(dtype: torch.dtype, channels_last: bool, tol: float, ecm: str,
                         device: str) -> None:
    # As test_online_dtypes: the clamp is wide in half precision, where an output rounded
    # across its edge would switch the gradient on or off.
    clamp = CLAMP if dtype in (torch.float32, torch.float64) else 50.0
    expected = train_steps(torch.float64, False, ecm, clamp)
    actual = train_steps(dtype, channels_last, ecm, clamp, device=device, impl="triton")
    for step, (got, want) in enumerate(zip(actual, expected)):
        assert got["out"].dtype == dtype and got["grad_x"].dtype == dtype
        assert got["grad_weight"].dtype == torch.float32
        if channels_last:
            assert got["out"].is_contiguous(memory_format=torch.channels_last)
            assert got["grad_x"].is_contiguous(memory_format=torch.channels_last)
        if ecm == "ac" and clamp == CLAMP:
            assert bool((want["out"].abs() == CLAMP).any())  # the clamp is exercised
        for key in want:
            assert rel_err(got[key], want[key]) < tol, (step, key)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_cancellation_in_float32_statistics(device: str) -> None:
    errors = cancellation_errors(device, impl="triton")
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("ecm,per_direction", [("ls", 4), ("ac", 3), ("none", 3)])
def test_launches_per_direction(ecm: str, per_direction: int, device: str, launches) -> None:
    layer = OnlineNorm2d(4, ecm=ecm, impl="triton").to(device)
    x = torch.randn(3, 4, 5, 5, device=device, requires_grad=True)
    out = layer(x)
    forward = [name for name, _ in launches]
    out.backward(torch.randn_like(out))
    backward = [name for name, _ in launches][len(forward):]
    assert len(forward) == per_direction and len(backward) == per_direction
    assert forward[-1] == "scale_shift_kernel" and backward[-1] == "combine_kernel"


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("impl", ["auto", "eager", "triton"])
def test_impl_picks_the_function_per_device(impl: str, device: str) -> None:
    if impl == "triton" and device == "cpu" and not TRITON_INTERPRETER:
        pytest.skip("Triton on CPU tensors runs only in its interpreter")
    layer = OnlineNorm2d(3, impl=impl).to(device)
    out = layer(torch.randn(2, 3, 4, 4, device=device, requires_grad=True))
    triton_expected = impl == "triton" or (impl == "auto" and device == "cuda")
    name = "OnlineNormTritonFunction" if triton_expected else "OnlineNormFunction"
    assert type(out.grad_fn).__name__ == name + "Backward"


@pytest.mark.parametrize("call", [lambda: OnlineNorm2d(4, impl="cuda"),
                                  lambda: OnlineNorm1d(4, impl="Triton"),
                                  lambda: norms.build_norm("online", 4, impl="fast"),
                                  lambda: norms.norm_factory("online", impl="fast")])
def test_unknown_impl_lists_choices(call) -> None:
    with pytest.raises(ValueError, match="unknown impl .*: choose one of auto, eager, triton"):
        call()


def test_without_triton_auto_is_eager_and_triton_is_refused(monkeypatch) -> None:
    from norms import impl
    from norms.online_function import OnlineNormFunction
    monkeypatch.setattr(impl, "triton_installed", lambda: False)
    for device in ("cpu", "cuda"):   # device objects only: nothing runs
        assert impl.training_function("auto", torch.device(device)) is OnlineNormFunction
        with pytest.raises(ValueError, match="needs the triton package, which is not installed"):
            impl.training_function("triton", torch.device(device))


def test_registry_passes_impl_to_online_layers_only() -> None:
    assert norms.build_norm("online", 4, impl="eager").impl == "eager"
    assert isinstance(norms.build_norm("batch", 4, impl="triton"), nn.BatchNorm2d)
    assert "impl='triton'" in repr(OnlineNorm2d(4, impl="triton"))


def test_triton_on_cpu_without_the_interpreter_is_refused() -> None:
    # A fresh process without TRITON_INTERPRET: the eager CPU path never imports the Triton
    # modules; impl='triton' on a CPU tensor raises one ValueError saying what to do.
    script = """
import sys
import torch
import norms
from norms import OnlineNorm2d
layer = OnlineNorm2d(3)
layer(torch.randn(2, 3, 4, 4, requires_grad=True)).sum().backward()
assert "norms.online_triton" not in sys.modules and "norms.triton_kernels" not in sys.modules
layer.impl = "triton"
try:
    layer(torch.randn(2, 3, 4, 4))
except ValueError as err:
    print(err)
else:
    raise SystemExit("no ValueError")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert "impl='triton' cannot run on a cpu tensor" in message
    assert "TRITON_INTERPRET=1" in message and "impl='auto' or impl='eager'" in message


def _model(impl: str, device: str) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), OnlineNorm2d(4, alpha_fwd=0.9, impl=impl),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5),
                         OnlineNorm1d(5, impl=impl)).to(device)


def _step(model: nn.Module, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    out = model.train()(torch.randn(6, 3, 6, 6, generator=gen).to(device))
    out.backward(torch.randn(out.shape, generator=gen).to(device))
    return out.detach()


def _buffers(model: nn.Module) -> list[torch.Tensor]:
    return [buf.clone() for name, buf in model.named_buffers()]


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_copies_and_saved_models_continue_identically(device: str) -> None:
    import copy
    import io
    model = _model("triton", device)
    _step(model, 0)
    assert set(model.state_dict()) == set(_model("eager", device).state_dict())
    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    fresh = _model("triton", device)
    fresh.load_state_dict(model.state_dict())
    assert loaded[1].impl == twin[1].impl == "triton"
    expected = _step(model, 1)
    for other in (twin, loaded, fresh):
        assert torch.equal(_step(other, 1), expected)
        assert all(torch.equal(a, b) for a, b in zip(_buffers(other), _buffers(model)))


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("ecm", ["ls", "ac"])
def test_cuda_graph_replays_the_step(ecm: str, device: str) -> None:
    # A whole training step (forward, backward, state updates) captured once and replayed
    # gives what running it gives: nothing waits for the host or picks kernels at run time.
    # Bitwise: the kernels add in a fixed order (no atomics).
    import copy
    torch.manual_seed(0)
    layer = OnlineNorm2d(8, alpha_fwd=0.9, ecm=ecm, clamp_val=1.5, impl="triton").to(device)
    twin = copy.deepcopy(layer)
    x = torch.randn(16, 8, 6, 6, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    twin_x = x.detach().clone().requires_grad_()

    def step(module, inp) -> torch.Tensor:
        out = module(inp)
        out.backward(grad)
        return out
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):      # warm-up (compiles, caches) off the capture stream
        for _ in range(2):
            step(layer, x)
            step(twin, twin_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    x.grad = twin_x.grad = None
    layer.zero_grad(set_to_none=True)
    twin.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        out = step(layer, x)
    for i in range(3):
        data = torch.randn(x.shape, device=device) * (1 + i)
        with torch.no_grad():
            x.copy_(data)
            twin_x.copy_(data)
        graph.replay()
        twin_x.grad = None
        twin.zero_grad(set_to_none=True)
        expected = step(twin, twin_x)
        torch.cuda.synchronize()
        assert torch.equal(out, expected) and torch.equal(x.grad, twin_x.grad), i
        assert torch.equal(layer.weight.grad, twin.weight.grad), i
        for name in ("m", "var", "u", "v"):
            assert torch.equal(getattr(layer, name), getattr(twin, name)), (i, name)


def _compile_for_sm90(*flags: str) -> str:
    script = REPO / "tests" / "norms" / "triton_compile.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, str(script), *flags], env=env,
                            capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed to compile" in result.stdout
    return result.stdout


@pytest.mark.skipif(not TRITON_INTERPRETER, reason="checks the compiler where no GPU runs it")
def test_every_launch_compiles_for_sm90() -> None:
    # The interpreter never compiles: a fresh process without it compiles the launches of
    # a float32 'ls' step, a bfloat16 channels_last 'ac' step, a non-affine float16 'none'
    # step and a float64 channels_last 'ac' step to sm_90 cubins (every kernel, every ecm
    # branch) with Triton's own ptxas. float64 'ac' is the variant whose clamp once had no
    # sm_90 instruction on Triton 3.8.
    out = _compile_for_sm90("--cases", "4")
    assert "scale_shift_kernel ECM=2" in out


@pytest.mark.slow
@pytest.mark.skipif(not TRITON_INTERPRETER, reason="checks the compiler where no GPU runs it")
def test_every_dtype_ecm_affine_and_layout_compiles_for_sm90() -> None:
    _compile_for_sm90("--all")


@pytest.mark.skipif(not TRITON_INTERPRETER, reason="the Triton path on CPU tensors")
def test_triton_failure_is_recognized_through_the_backward(monkeypatch):
    # A kernel failing in the backward reaches the caller through autograd's engine; the
    # frames it passed through still name the Triton path.
    from norms import online_triton, triton_kernels
    launch = online_triton._launch

    def failing(kernel, grid, *args, **meta):
        if kernel is triton_kernels.grad_sums_kernel:
            raise RuntimeError("launch failed")
        launch(kernel, grid, *args, **meta)
    monkeypatch.setattr(online_triton, "_launch", failing)
    layer = OnlineNorm2d(2, impl="triton")
    x = torch.randn(2, 2, 2, 2, requires_grad=True)
    with pytest.raises(RuntimeError) as err:
        nn.functional.relu(layer(x)).sum().backward()
    assert norms.impl.triton_failure(err.value)
    assert not norms.impl.triton_failure(ValueError("elsewhere"))
