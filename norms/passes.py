"""Online Normalization's passes over the big (N, C, H, W) tensors, by the fastest kernels.

On CPU, for contiguous float32/float64 tensors, viewing (N, C, H, W) as one sample with N*C
channels lets the native batch-norm kernels do the work: their backward reduction yields
sum(g) and sum(g*(x - mean)) (or, with g = x and mean 0, sum(x) and sum(x^2)) in one pass,
their eval-mode forward is a fused per-channel x*A + B, and their statistics kernel gives
centred variances when cancellation threatens. Anywhere else (CUDA, channels_last, half
precision) plain ops are used, on (N*C, H*W) rows where the tensor is contiguous (reductions
and scalings run fastest there); both give the same values.

Per-(n, c) quantities travel samples-last, as (C, N) tensors (the layout the batch
recurrences scan fastest): results of reductions are contiguous float64 (C, N); coefficients
may come in any floating dtype and layout and are cast to the big tensor's. A coefficient
made by `coefficient(x)` and written with out= is already as the passes read it: no copy.
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


def _fast_channels_last(*tensors: torch.Tensor) -> bool:
    """CPU float32/float64 tensors in channels_last (NHWC) memory, each of whose samples is
    an (H*W, C) row-major matrix: reductions over H*W then run along rows, vectorized over
    the contiguous channels."""
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
               and t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
               for t in tensors)


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """A channels_last (N, C, H, W) tensor as an (N, H*W, C) view (no copy)."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n, h * w, c)


def _image_rows(t: torch.Tensor) -> torch.Tensor:
    """A channels_last (N, C, H, W) tensor as an (N, H, W*C) view: image rows, each W*C
    long, so that elementwise passes run long inner loops (over one sample's C channels
    alone, they ran 16 elements at a time and several times slower)."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n, h, w * c)


def _along_row(coef: torch.Tensor, w: int) -> torch.Tensor:
    """An (N, C) per-(n, c) coefficient repeated for each of W positions: (N, 1, W*C), to
    broadcast over _image_rows (a small copy, N*W*C elements)."""
    return coef.repeat(1, w)[:, None, :]


# Elements of the product tile _row_dots works on at a time: about 1 MB of float32, so that
# the product is summed while it is still in cache.
_DOT_TILE = 1 << 18


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, L, C) x (N, L, C) -> (N, C): sum over L of a*b, a few samples at a time. Whole,
    the product would be an activation-sized temporary, written to memory and read back (and
    for the largest layers, above malloc's mmap threshold, fresh pages every call)."""
    n, length, c = a.shape
    step = max(1, _DOT_TILE // (length * c))
    if step >= n:
        return torch.mul(a, b).sum(1)
    out = torch.empty((n, c), dtype=a.dtype, device=a.device)
    tile = torch.empty((step, length, c), dtype=a.dtype, device=a.device)
    for start in range(0, n, step):
        stop = min(n, start + step)
        part = tile[:stop - start]
        torch.mul(a[start:stop], b[start:stop], out=part)
        torch.sum(part, 1, out=out[start:stop])
    return out


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=32)
def _constant(value: float, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A read-only vector of `value`, cached: the batch-norm kernels want one every call."""
    return torch.full((n,), value, dtype=dtype, device=device)


@functools.lru_cache(maxsize=4)
def _empty(dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(0, dtype=dtype)


def _flat_channels(t: torch.Tensor) -> torch.Tensor:
    n, c, h, w = t.shape
    return t.view(1, n * c, h, w)


def _transposed(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t.t() as a contiguous tensor of `dtype`, in one copy (`to` alone would keep the
    transposed strides, and does not copy at all when the dtype already matches)."""
    return torch.empty((t.shape[1], t.shape[0]), dtype=dtype, device=t.device).copy_(t.t())


def _samples_last(t: torch.Tensor, n: int, c: int) -> torch.Tensor:
    """An (N*C,) or (N, C) result as a contiguous float64 (C, N)."""
    return _transposed(t.view(n, c), torch.float64)


def _samples_first(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A (C, N) coefficient as a contiguous (N, C) tensor of `dtype` (itself if it is one)."""
    flipped = t.t()
    if t.dtype == dtype and flipped.is_contiguous():
        return flipped
    return _transposed(t, dtype)


def coefficient(x: torch.Tensor) -> torch.Tensor:
    """An empty (C, N) per-(n, c) coefficient for passes over x, laid out as they read it
    (samples first, x's dtype): fill it with out= and the passes take it as it is."""
    return torch.empty((x.shape[0], x.shape[1]), dtype=x.dtype, device=x.device).t()


def spatial_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) mean and biased variance of x over H and W, float64 (C, N)."""
    n, c, h, w = x.shape
    hw = h * w
    if _fast(x) and hw > 1:
        # The batch-norm backward reduction with grad = x and mean 0 gives sum(x) and
        # sum(x^2) in one pass over x.
        nc = n * c
        ones = _constant(1.0, nc, x.dtype, x.device)
        flat = _flat_channels(x)
        _, sum_sq, total = torch.ops.aten.native_batch_norm_backward(
            flat, flat, ones, None, None, _constant(0.0, nc, x.dtype, x.device), ones, True,
            0.0, [False, True, True])
        exact_enough = x.dtype == torch.float64
    elif _fast_channels_last(x) and hw > 1:
        # The same two sums in the input's dtype, along the rows of each sample's (H*W, C)
        # matrix; the cancellation check below guards float32 as it does the pass above.
        rows = _nhwc(x)
        total = rows.sum(1)
        sum_sq = _row_dots(rows, rows)
        exact_enough = x.dtype == torch.float64
    else:
        # Sums accumulated in float64: E[x^2] - E[x]^2 then keeps its digits unless the mean
        # exceeds the spread by ~1e5, with no data-dependent check (which would make the
        # host wait for a CUDA device at every layer). CUDA's float32 Welford kernel
        # (var_mean) lost 4e-4 of the variance at an offset of 1e4 (H200).
        flat, dims = (x.view(n * c, hw), 1) if x.is_contiguous() else (x, (2, 3))
        total = flat.sum(dims, dtype=torch.float64)
        sum_sq = torch.linalg.vector_norm(flat, 2, dims, dtype=torch.float64).square_()
        exact_enough = True
    mean = _samples_last(total, n, c).div_(hw)
    mean_sq = _samples_last(sum_sq, n, c).div_(hw)
    var = torch.addcmul(mean_sq, mean, mean, value=-1)
    if exact_enough:
        return mean, var.clamp_min_(0)
    # Past this check var >= ratio*E[x^2] >= 0, so no clamp is needed.
    if float(torch.sub(var, mean_sq, alpha=_CANCELLATION_RATIO).min()) < 0:
        if x.is_contiguous():
            mean, var = torch.batch_norm_update_stats(_flat_channels(x), None, None, 0.0)
        else:   # channels_last: centred statistics along each sample's rows
            var, mean = torch.var_mean(_nhwc(x), 1, correction=0)
        return _samples_last(mean, n, c), _samples_last(var, n, c)
    return mean, var


def _rows(t: torch.Tensor) -> torch.Tensor:
    """An (N*C, H*W) view of a contiguous (N, C, H, W) tensor or a (N*C, 1) one of (N, C)."""
    return t.view(t.shape[0] * t.shape[1], -1)


def scale_shift(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x * scale[n, c] + shift[n, c] in x's dtype and memory format; scale, shift (C, N)."""
    scale, shift = _samples_first(scale, x.dtype), _samples_first(shift, x.dtype)
    # Written into `out` itself: a view returned from the autograd Function could not be
    # modified in place (by an inplace ReLU, say).
    out = torch.empty_like(x)
    if _fast(x):
        # The batch-norm eval kernel is a fused per-channel x*A + B: one pass, where a
        # broadcasting addcmul runs unvectorized and a multiply then add takes two.
        nc = scale.numel()
        torch.ops.aten.native_batch_norm.out(
            _flat_channels(x), scale.view(nc), shift.view(nc),
            _constant(0.0, nc, x.dtype, x.device), _constant(1.0, nc, x.dtype, x.device),
            False, 0.0, 0.0, out=_flat_channels(out), save_mean=_empty(x.dtype),
            save_invstd=_empty(x.dtype))
        return out
    if _fast_channels_last(x):
        w = x.shape[3]
        torch.addcmul(_along_row(shift, w), _image_rows(x), _along_row(scale, w),
                      out=_image_rows(out))
        return out
    return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None], out=out)


def grad_sums(grad: torch.Tensor, x: torch.Tensor,
              mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) sum(grad) and sum(grad * (x - mean)) over H and W, float64 (C, N);
    mean (C, N)."""
    n, c = x.shape[:2]
    if _fast(grad, x) and grad.dtype == x.dtype:
        ones = _constant(1.0, n * c, x.dtype, x.device)
        _, sum_gxc, sum_g = torch.ops.aten.native_batch_norm_backward(
            _flat_channels(grad), _flat_channels(x), ones, None, None,
            _samples_first(mean, x.dtype).view(n * c), ones, True, 0.0, [False, True, True])
        return _samples_last(sum_g, n, c), _samples_last(sum_gxc, n, c)
    if _fast_channels_last(grad, x) and grad.dtype == x.dtype:
        # sum(g*x) - mean*sum(g) from two reductions, no temporary: uncentred, but a float32
        # x with an offset has no more digits than that to lose (the offset's rounding in
        # a centred x - mean costs as much), and float32 against float64 stays ~1e-6 at an
        # offset of 1e4 times the spread (tests/norms/test_online_dtypes.py).
        rows_g = _nhwc(grad)
        sum_g = _samples_last(rows_g.sum(1), n, c)
        sum_gx = _samples_last(_row_dots(rows_g, _nhwc(x)), n, c)
        return sum_g, sum_gx.addcmul_(mean, sum_g, value=-1)
    acc = _acc_dtype(x.dtype)
    if x.dtype in _LOW_PRECISION:
        grad, x = grad.float(), x.float()
    # Centred before the product: sum(g*x) - mean*sum(g) would cancel for offset inputs.
    centred = x - _samples_first(mean, x.dtype)[:, :, None, None]
    sum_g = _samples_last(grad.sum((2, 3), dtype=acc), n, c)
    sum_gxc = _samples_last((grad * centred).sum((2, 3), dtype=acc), n, c)
    return sum_g, sum_gxc


def combine(grad: torch.Tensor, x: torch.Tensor, p: torch.Tensor, neg_q: torch.Tensor,
            r: torch.Tensor) -> torch.Tensor:
    """grad * p[n, c] - x * neg_q[n, c] + r[n, c] in x's dtype; p, neg_q, r (C, N)."""
    out = scale_shift(grad.to(x.dtype), p, r)
    neg_q = _samples_first(neg_q, x.dtype)
    if x.is_contiguous() and out.is_contiguous():
        _rows(out).addcmul_(_rows(x), _rows(neg_q), value=-1)
        return out
    if _fast_channels_last(x, out) and x.dtype == out.dtype:
        _image_rows(out).addcmul_(_image_rows(x), _along_row(neg_q, x.shape[3]), value=-1)
        return out
    return out.addcmul_(x, neg_q[:, :, None, None], value=-1)
