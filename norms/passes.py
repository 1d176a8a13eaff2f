"""Online Normalization's passes over the big (N, C, H, W) tensors, by the fastest kernels.

On CPU, for contiguous float32/float64 tensors, viewing (N, C, H, W) as one sample with N*C
channels lets the native batch-norm kernels do the work: their eval-mode forward is a fused
per-channel x*A + B, and their backward reduction yields sum(g) and sum(g*(x - mean)) in one
pass. Anywhere else (CUDA, channels_last, half precision) plain broadcasting ops are used;
both give the same values. Results of reductions are float64 (N, C).
"""

from __future__ import annotations

import functools

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Below this ratio of variance to mean square, E[x^2] - E[x]^2 from float32 sums loses too
# many digits; such batches are measured again with a centred (two-pass) method.
_CANCELLATION_RATIO = 1e-3


def _fast(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
               and t.is_contiguous() for t in tensors)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=32)
def _constant(value: float, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A read-only vector of `value`, cached: the batch-norm kernels want one every call."""
    return torch.full((n,), value, dtype=dtype, device=device)


def _flat_channels(t: torch.Tensor) -> torch.Tensor:
    n, c, h, w = t.shape
    return t.view(1, n * c, h, w)


def spatial_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) mean and biased variance of x over H and W."""
    n, c, h, w = x.shape
    hw = h * w
    acc = _acc_dtype(x.dtype)
    mean = x.sum((2, 3), dtype=acc).double().div_(hw)
    if hw == 1:
        return mean, torch.zeros_like(mean)
    mean_sq = torch.linalg.vector_norm(x, 2, (2, 3), dtype=acc).double().square_().div_(hw)
    var = (mean_sq - mean.square()).clamp_min_(0)
    if x.dtype != torch.float64 and bool((var < _CANCELLATION_RATIO * mean_sq).any()):
        if _fast(x):
            mean, var = torch.batch_norm_update_stats(_flat_channels(x), None, None, 0.0)
            return mean.double().view(n, c), var.double().view(n, c)
        centred = x - mean.to(x.dtype)[:, :, None, None]
        shift = centred.sum((2, 3), dtype=acc).double() / hw
        var = (torch.linalg.vector_norm(centred, 2, (2, 3), dtype=acc).double().square() / hw
               - shift.square()).clamp_min(0)
        mean = mean + shift
    return mean, var


def scale_shift(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x * scale[n, c] + shift[n, c] in x's dtype and memory format; scale, shift (N, C)."""
    out = torch.empty_like(x)
    if _fast(x):
        nc = scale.numel()
        # The out= form writes into `out` itself: a view returned from the autograd
        # Function could not be modified in place (by an inplace ReLU, say).
        torch.ops.aten.native_batch_norm.out(
            _flat_channels(x), scale.to(x.dtype).view(nc), shift.to(x.dtype).view(nc),
            _constant(0.0, nc, x.dtype, x.device), _constant(1.0, nc, x.dtype, x.device),
            False, 0.0, 0.0, out=_flat_channels(out), save_mean=torch.empty(0, dtype=x.dtype),
            save_invstd=torch.empty(0, dtype=x.dtype))
        return out
    return torch.addcmul(shift.to(x.dtype)[:, :, None, None], x,
                         scale.to(x.dtype)[:, :, None, None], out=out)


def grad_sums(grad: torch.Tensor, x: torch.Tensor,
              mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) sum(grad) and sum(grad * (x - mean)) over H and W."""
    if _fast(grad, x) and grad.dtype == x.dtype:
        nc = mean.numel()
        ones = _constant(1.0, nc, x.dtype, x.device)
        _, sum_gxc, sum_g = torch.ops.aten.native_batch_norm_backward(
            _flat_channels(grad), _flat_channels(x), ones, None, None,
            mean.to(x.dtype).view(nc), ones, True, 0.0, [False, True, True])
        return sum_g.double().view(mean.shape), sum_gxc.double().view(mean.shape)
    acc = _acc_dtype(x.dtype)
    if x.dtype in _LOW_PRECISION:
        grad, x = grad.float(), x.float()
    sum_g = grad.sum((2, 3), dtype=acc).double()
    sum_gx = (grad * x).sum((2, 3), dtype=acc).double()
    return sum_g, sum_gx - mean * sum_g


def combine(grad: torch.Tensor, x: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
            r: torch.Tensor) -> torch.Tensor:
    """grad * p[n, c] + x * q[n, c] + r[n, c] in x's dtype; p, q, r (N, C)."""
    out = scale_shift(grad.to(x.dtype), p, r)
    return out.addcmul_(x, q.to(x.dtype)[:, :, None, None])
