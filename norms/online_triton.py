"""The training-mode Online Normalization op on Triton kernels (norms.triton_kernels).

Same contract as norms.online_function.OnlineNormFunction, the eager closed form: an
(N, C, H, W) input, the state buffers m, var, u, v (an OnlineNormState) updated in place,
the layer's constants as one OnlineNormConstants, the paper's control process as the
backward. Each direction is three kernel launches, four with layer scaling
(the kernel module's docstring lists them). Nothing here waits for the device or branches
on tensor values, and block sizes follow from the shape alone (no autotuning), so a step can
run ahead of the GPU and be captured in a CUDA graph.

With a `chain` (norms.sample_chain.SampleChain: a data-parallel trial, every rank with the
same number of samples) the recurrences run over every rank's samples, as in the eager op. The
forward all-gathers the per-(n, c) partial sums of spatial_sums (small: never activations),
scans the global batch on every rank (m and var come out the same everywhere) and keeps only
this rank's per-(n, c) results, so that the output pass and the whole backward but its scan
see this rank's samples alone. The backward computes what this rank's samples feed the
control process (chain_terms, which also does layer scaling's per-sample k), all-gathers
it, and scans the global batch for u and v, writing this rank's coefficients and affine
gradients. One collective per direction, and the launches of a step without a chain but
for the backward's chain_terms in place of grad_layer_scale (so four whatever the ecm):
forward spatial_sums, gather, forward_scan, [layer_scale,] scale_shift; backward grad_sums,
chain_terms, gather, backward_scan, combine. The rank and world size are kernel arguments
that are not specialized on, so every rank runs the same compiled kernels.

Imported only when the Triton path runs (norms.impl decides), so norms imports without
triton.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
import triton
from torch.autograd.function import once_differentiable

from norms import triton_kernels as kernels
from norms.online_inputs import OnlineNormConstants, OnlineNormState

_ECM = {"none": kernels.ECM_NONE.value, "ls": kernels.ECM_LS.value, "ac": kernels.ECM_AC.value}

# Elements per tile of the elementwise passes and of the reductions (which keep two float64
# accumulators per element): with 4 warps, 16 and 8 elements per thread.
PASS_TILE = 2048
SUM_TILE = 1024
# A reduction over H*W is split over more programs while the grid has fewer than this
# (an H200 has 132 SMs), into at most MAX_SPLIT partial sums.
TARGET_PROGRAMS = 1024
MAX_SPLIT = 16
# The scan kernels hold [BLOCK_N, BLOCK_C] float64 tiles, about 30 of them live at once in
# the backward: SCAN_TILE elements per program keeps that within registers. Batches of up to
# SHORT_SCAN_ROWS samples take tiles of that many rows, longer ones MAX_SCAN_ROWS (in chunks
# beyond): two sizes, not one per batch size, so that few variants compile.
SCAN_TILE = 256
SHORT_SCAN_ROWS = 32
MAX_SCAN_ROWS = 256
# Programs of the per-sample (layer-scaling) kernels: samples per program, channels per step.
LS_ROWS = 16
LS_COLS = 64


def _launch(kernel: Any, grid: tuple[int], *args: Any, **meta: Any) -> None:
    """Every kernel launch goes through here (tests count and record them)."""
    kernel[grid](*args, **meta)


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer the kernels write (tests surround them with NaN to catch stray reads)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _empty_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t)


@functools.cache
def _constants(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The float64 tensor of a layer's constants (alpha_fwd, eps, alpha_bkw, ls_eps, clamp,
    in the kernels' K_* order), made once per value and device. Filled on the device, not
    copied from the host (a copy would make the host wait, once). Kept for the process's
    life: a captured CUDA graph keeps reading its address."""
    consts = torch.empty(len(values), dtype=torch.float64, device=device)
    for i, value in enumerate(values):
        consts[i].fill_(value)
    return consts


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _spatial_strides(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """t and its (sample, channel, position) strides, H and W flattened into one position
    index. Contiguous and channels_last tensors (and expanded ones, stride 0) qualify as
    they are; any other layout is copied to a contiguous one first."""
    _, _, h, w = t.shape
    s_n, s_c, s_h, s_w = t.stride()
    if h == 1:
        return t, (s_n, s_c, s_w)
    if w == 1 or s_h == w * s_w:
        return t, (s_n, s_c, s_h if w == 1 else s_w)
    t = t.contiguous()
    return _spatial_strides(t)


def _pass_blocks(c: int, hw: int, strides: tuple[int, int, int], tile: int
                 ) -> tuple[int, int, int]:
    """(BLOCK_NS, BLOCK_C, BLOCK_HW) of a pass's tile. Within a sample, its long side runs
    along the dimension that is contiguous in memory (positions for NCHW, channels for
    channels_last) so that loads coalesce; samples smaller than a tile share one (1d and
    1x1 layers would otherwise launch a program per sample)."""
    _, s_c, s_hw = strides
    if hw == 1 or (s_c == 1 and s_hw != 1):
        block_c = min(_pow2(c), tile)
        block_hw = min(_pow2(hw), max(1, tile // block_c))
    else:
        block_hw = min(_pow2(hw), tile)
        block_c = min(_pow2(c), max(1, tile // block_hw))
    # Samples per tile from the sample size alone (not N), so batch sizes share variants.
    return max(1, tile // (block_c * block_hw)), block_c, block_hw


def _split(programs: int, chunks: int) -> tuple[int, int]:
    """(SPLIT, chunks per split): partial sums over H*W when the grid is small."""
    split = max(1, min(MAX_SPLIT, chunks, _cdiv(TARGET_PROGRAMS, programs)))
    per_split = _cdiv(chunks, split)
    return _cdiv(chunks, per_split), per_split


def _scan_blocks(n: int, c: int) -> tuple[int, int]:
    block_n = min(SHORT_SCAN_ROWS if n <= SHORT_SCAN_ROWS else MAX_SCAN_ROWS, MAX_SCAN_ROWS)
    return block_n, min(_pow2(c), max(1, SCAN_TILE // block_n))


def _pair_sums(kernel, tensors: tuple[torch.Tensor, ...], strides: tuple[tuple[int, ...], ...],
               shape: tuple[int, int, int], extra: tuple, constants: dict[str, Any]
               ) -> torch.Tensor:
    """Launch a per-(n, c) reduction over H*W (spatial_sums or grad_sums): float64
    (2, SPLIT, N, C) partial sums."""
    n, c, hw = shape
    block_ns, block_c, block_hw = _pass_blocks(c, hw, strides[-1], SUM_TILE)
    n_cb = _cdiv(c, block_c)
    programs = _cdiv(n, block_ns) * n_cb
    split, per_split = _split(programs, _cdiv(hw, block_hw))
    sums = _empty((2, split, n, c), torch.float64, tensors[0].device)
    flat = [s for stride in strides for s in stride]
    _launch(kernel, (programs * split,), *tensors, *extra, sums, n, c, hw, *flat, n_cb,
            per_split, SPLIT=split, BLOCK_NS=block_ns, BLOCK_C=block_c, BLOCK_HW=block_hw,
            **constants)
    return sums


def _pass_launch(n: int, c: int, hw: int, strides: tuple[int, int, int]
                 ) -> tuple[tuple[int], tuple[int, int], dict[str, int]]:
    """Grid, (channel blocks, spatial blocks) and block sizes of an elementwise pass."""
    block_ns, block_c, block_hw = _pass_blocks(c, hw, strides, PASS_TILE)
    n_cb, n_hb = _cdiv(c, block_c), _cdiv(hw, block_hw)
    return ((_cdiv(n, block_ns) * n_cb * n_hb,), (n_cb, n_hb),
            {"BLOCK_NS": block_ns, "BLOCK_C": block_c, "BLOCK_HW": block_hw})


def _params(weight: torch.Tensor | None, bias: torch.Tensor | None, x: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias pointers (x stands in for both without affine: never read)."""
    if weight is None:
        return x, x
    return weight.contiguous(), bias.contiguous()


class OnlineNormTritonFunction(torch.autograd.Function):
    """Training-mode Online Normalization on an (N, C, H, W) input; updates m, var, u, v."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, state: OnlineNormState,
                constants: OnlineNormConstants, chain: Any = None) -> torch.Tensor:
        with _on_device(x.device):
            return _forward(ctx, x, weight, bias, state, constants, chain)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        with _on_device(grad_out.device):
            return _backward(ctx, grad_out)


def _on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it the tensor's (a no-op when it
    already is, the usual case)."""
    if device.type == "cuda" and device.index is not None \
            and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Half-precision passes compute in float32; float64 inputs keep float64 throughout.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _rows(chain: Any, n: int) -> tuple[int, int, int]:
    """(samples scanned, this rank's first among them, world size): the global batch with
    a chain, the local one (0, 1) without."""
    if chain is None:
        return n, 0, 1
    return chain.world * n, chain.rank * n, chain.world


def _gather(chain: Any, t: torch.Tensor) -> torch.Tensor:
    """A (..., n, C) float64 tensor of this rank's samples -> (..., world*n, C), every
    rank's in rank order (SampleChain.gather along the sample dimension)."""
    *lead, n, c = t.shape
    return chain.gather(t.reshape(-1, n, c)).view(*lead, -1, c)


def _forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
             bias: torch.Tensor | None, state: OnlineNormState,
             constants: OnlineNormConstants, chain: Any = None) -> torch.Tensor:
    n, c, h, w = x.shape
    hw = h * w
    x, x_strides = _spatial_strides(x)
    affine = weight is not None
    w_arg, b_arg = _params(weight, bias, x)
    device = x.device
    ecm = constants.ecm
    consts = _constants((constants.alpha_fwd, constants.eps, constants.alpha_bkw,
                         constants.ls_eps, constants.clamp_val), device)

    sums = _pair_sums(kernels.spatial_sums_kernel, (x,), (x_strides,), (n, c, hw), (), {})
    if chain is not None:
        sums = _gather(chain, sums)
    total, first, _ = _rows(chain, n)
    saved = _empty((4, n, c), torch.float64, device)
    coef = _empty((2, n, c), _compute_dtype(x), device)
    block_n, block_c = _scan_blocks(total, c)
    _launch(kernels.forward_scan_kernel, (_cdiv(c, block_c),),
            sums, state.m, state.var, w_arg, b_arg, saved, coef, consts, total, first, n, c, hw,
            SPLIT=sums.shape[1], BLOCK_N=block_n, BLOCK_C=block_c, HAS_AFFINE=affine,
            WRITE_COEF=ecm != "ls")
    del sums
    fk = None
    if ecm == "ls":
        fk = _empty((2, n), torch.float64, device)   # f, then k
        _launch(kernels.layer_scale_kernel, (_cdiv(n, LS_ROWS),),
                saved, w_arg, b_arg, fk, coef, consts, n, c, BLOCK_N=LS_ROWS,
                BLOCK_C=min(_pow2(c), LS_COLS), HAS_AFFINE=affine)

    out = _empty_like(x)
    out_strides = _spatial_strides(out)[1]
    grid, blocks, sizes = _pass_launch(n, c, hw, x_strides)
    _launch(kernels.scale_shift_kernel, grid,
            x, coef, out, consts, n, c, hw, *x_strides, *out_strides, *blocks, ECM=_ECM[ecm],
            **sizes)

    ctx.save_for_backward(x, weight, bias)
    ctx.small = (saved, coef, fk)
    ctx.state = state
    ctx.config = (consts, ecm)
    ctx.chain = chain
    return out


def _backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, weight, bias = ctx.saved_tensors
    saved, coef, fk = ctx.small
    u, v = ctx.state.u, ctx.state.v
    consts, ecm = ctx.config
    chain = ctx.chain
    n, c, h, w = x.shape
    hw = h * w
    _, x_strides = _spatial_strides(x)
    grad_out, g_strides = _spatial_strides(grad_out)
    affine = weight is not None
    w_arg, b_arg = _params(weight, bias, x)

    sums = _pair_sums(kernels.grad_sums_kernel, (grad_out, x), (g_strides, x_strides),
                      (n, c, hw), (saved, coef, consts), {"ECM": _ECM[ecm]})
    split = sums.shape[1]
    fk_arg = fk if fk is not None else saved   # never read without layer scaling
    terms = saved                              # never read without a chain
    if chain is not None:
        terms = _empty((4, n, c), torch.float64, x.device)
        # As many live tiles as the backward scan's control terms: its tile size.
        _launch(kernels.chain_terms_kernel, (_cdiv(n, LS_ROWS),),
                sums, saved, w_arg, b_arg, fk_arg, terms, consts, n, c, hw, chain.world,
                ECM=_ECM[ecm], SPLIT=split, BLOCK_N=LS_ROWS,
                BLOCK_C=min(_pow2(c), max(1, SCAN_TILE // LS_ROWS)), HAS_AFFINE=affine)
        terms = _gather(chain, terms)
    elif ecm == "ls":
        _launch(kernels.grad_layer_scale_kernel, (_cdiv(n, LS_ROWS),),
                sums, saved, w_arg, b_arg, fk, n, c, hw, SPLIT=split, BLOCK_N=LS_ROWS,
                BLOCK_C=min(_pow2(c), LS_COLS), HAS_AFFINE=affine)
    total, first, world = _rows(chain, n)
    grad_weight = _empty_like(weight) if affine else None
    grad_bias = _empty_like(bias) if affine else None
    back_coef = _empty_like(coef)      # Q, R
    block_n, block_c = _scan_blocks(total, c)
    _launch(kernels.backward_scan_kernel, (_cdiv(c, block_c),),
            sums, saved, fk_arg, w_arg, b_arg, u, v,
            grad_weight if affine else x, grad_bias if affine else x, back_coef, terms, consts,
            total, first, n, c, hw, world, ECM=_ECM[ecm], SPLIT=split, BLOCK_N=block_n,
            BLOCK_C=block_c, HAS_AFFINE=affine, CHAIN=chain is not None)
    del sums, terms

    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = _empty_like(x)
        out_strides = _spatial_strides(grad_x)[1]
        grid, blocks, sizes = _pass_launch(n, c, hw, x_strides)
        _launch(kernels.combine_kernel, grid,
                grad_out, x, coef, back_coef, grad_x, consts, n, c, hw, *g_strides,
                *x_strides, *out_strides, *blocks, ECM=_ECM[ecm], **sizes)
    return grad_x, grad_weight, grad_bias, None, None, None
