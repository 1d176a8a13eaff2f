"""Helpers shared by the norms tests: one relative error, the layer-vs-reference and
float64-vs-lower-precision training runs, NaN-surrounded buffers. Holds no tests."""

from __future__ import annotations

import torch
from online_reference import ReferenceOnlineNorm

from norms import OnlineNorm1d, OnlineNorm2d


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual - expected| / max|expected|, in float64.

    Relative to the reference's largest magnitude, not element by element, so entries near
    zero do not dominate; in float64 so the comparison adds no rounding of its own. The
    denominator's floor of 1e-12 makes an all-zero reference compare by absolute size (an
    exact zero gives 0, not NaN); every reference these tests compare against is O(1).
    """
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


TOL = 1e-5   # run_against_reference: the float32 layer against the float64 reference


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


SHAPE = (8, 4, 5, 6)
CLAMP = 1.5


def train_steps(dtype: torch.dtype, channels_last: bool, ecm: str, clamp: float,
                steps: int = 3, device: str = "cpu",
                impl: str = "auto") -> list[dict[str, torch.Tensor]]:
    """Three training steps on `device`; every result comes back on the CPU."""
    gen = torch.Generator().manual_seed(1)
    layer = OnlineNorm2d(SHAPE[1], alpha_fwd=0.9, alpha_bkw=0.8, ecm=ecm, clamp_val=clamp,
                         impl=impl)
    with torch.no_grad():
        layer.weight.copy_(1 + 0.3 * torch.randn(SHAPE[1], generator=gen))
        layer.bias.copy_(0.3 * torch.randn(SHAPE[1], generator=gen))
    layer.to(device)
    results = []
    for _ in range(steps):
        x64 = 2 * torch.randn(SHAPE, generator=gen, dtype=torch.float64) + 1
        g64 = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
        x, g = x64.to(device, dtype), g64.to(device, dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            g = g.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        layer.weight.grad = layer.bias.grad = None
        out = layer.train()(x)
        out.backward(g)
        layer.eval()
        with torch.no_grad():
            evaluated = layer(x.detach())
        results.append({"out": out.detach(), "grad_x": x.grad, "eval": evaluated,
                        "grad_weight": layer.weight.grad.clone(),
                        "m": layer.m.clone(), "v": layer.v.clone()})
        results[-1] = {key: value.cpu() for key, value in results[-1].items()}
    return results


def cancellation_errors(device: str = "cpu", impl: str = "auto") -> dict[str, float]:
    """float32 against float64 for inputs with a large common offset, where E[x^2] - E[x]^2
    (forward) and sum(g*x) - mean*sum(g) (backward) from float32 sums would lose most
    digits. Relative errors of the running variance and the weight gradient (made of
    sum(g*(x - mean)) alone), per layout. (The input gradient x*Q + R cancels whatever the
    sums, so it cannot tell.)"""
    gen = torch.Generator().manual_seed(2)
    # Values exactly representable in float32, so only the arithmetic differs.
    x64 = (1e4 + torch.randn(4, 3, 8, 8, generator=gen)).double()
    g64 = torch.randn(4, 3, 8, 8, generator=gen).double()
    errors = {}
    for channels_last in (False, True):
        results = []
        for dtype in (torch.float64, torch.float32):
            # alpha_fwd 0: var is the last sample's own variance, not swamped by the
            # a*(1-a)*d^2 term of a decaying mean (which hid a 9-25% error at 0.5).
            layer = OnlineNorm2d(3, alpha_fwd=0.0, ecm="none", impl=impl).to(device)
            x = x64.to(device, dtype, copy=True)
            g = g64.to(device, dtype)
            if channels_last:   # the gradient too, as a channels_last network passes it
                x = x.contiguous(memory_format=torch.channels_last)
                g = g.contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            layer(x).backward(g)
            results.append((layer.var.cpu(), layer.weight.grad.cpu()))
        layout = "channels_last" if channels_last else "contiguous"
        errors[f"{layout} var"] = rel_err(results[1][0], results[0][0])
        errors[f"{layout} grad_weight"] = rel_err(results[1][1], results[0][1])
    return errors


PAD = 64


def nan_padded(shape, strides, dtype, device) -> torch.Tensor:
    """An uninitialized-looking tensor: NaN, inside PAD more NaN elements on either side."""
    span = 1 + sum((size - 1) * stride for size, stride in zip(shape, strides))
    big = torch.full((span + 2 * PAD,), float("nan"), dtype=dtype, device=device)
    return big.as_strided(shape, strides, PAD)
