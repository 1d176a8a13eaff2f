"""Triton kernels for Online Normalization's training step (launched by norms.online_triton).

A layer's forward is three launches (four with layer scaling), its backward the same:

  forward   spatial_sums    x                -> per-(split, n, c) sum x, sum x^2 (float64)
            forward_scan    sums, m, var     -> mu, s2, m_i, r_i per (n, c); m, var updated;
                                                the pass coefficients A, B (unless 'ls')
            layer_scale     ('ls' only)      -> per-sample factor f; A, B with f folded in
            scale_shift     x, A, B          -> out = x*A + B ('ac': clamped)
  backward  grad_sums       g, x, mu         -> per-(split, n, c) sum g, sum g*(x - mu)
                                                ('ac': g masked where the forward clamped)
            grad_layer_scale ('ls' only)     -> per-sample k of the layer-scaling gradient
            backward_scan   sums, u, v, ...  -> grad weight and bias; u, v updated;
                                                the pass coefficients Q, R
            combine         g, x, A, Q, R    -> grad_x = g*A - x*Q + R

The passes over activations run one program per tile (a block of samples by a block of
channels by a block of spatial positions; one sample per tile unless samples are smaller
than a tile), so the batch is processed in parallel; reductions that one
program cannot finish are split over a few programs writing partial sums, which their
consumer adds in a fixed order (deterministic, no atomics). Per-(n, c) arrays are float64
(N, C), row-major.

The recurrences over the batch (m, var forward; v, u backward) run in the scan kernels, one
program per block of channels (they never mix channels), on [BLOCK_N, BLOCK_C] tiles of
samples by channels. Each is an affine recurrence s_{i+1} = c_i*s_i + e_i, solved with
tl.associative_scan over the maps s -> c*s + e: log2(BLOCK_N) dependent steps in registers,
after one round of loads whose latency overlaps. A sequential loop over samples would be
the recurrence verbatim and as exact, but every iteration pays a dependent global load and
a float64 division/square root (several hundred cycles): ~0.1 ms for N = 256, a large part
of a whole layer's budget. Composing maps needs no division or logarithm, so v's coefficient
may be zero or negative. Batches longer than BLOCK_N run as consecutive chunks, the state
carried between them.

The scan gives inclusive prefixes (the state after sample i) but each sample needs the state
before it. Registers cannot be shifted by one row, so the inputs are: row i of the scan gets
the map of sample i-1 (loaded at index i-1; row 0 of a chunk the identity), and its prefix
is then the state before sample i. Where the map of sample i-1 itself depends on the state
before sample i-1 (var's on m, u's on v), a second scan with inputs shifted by two gives
that state.

All statistics and recurrences run in float64 (docs/norms.md: 0.999 rounded to float32 is off
by 1e-5), the layer's float constants included (read from a float64 tensor). Sizes that only
bound masks and loops are not specialized on (do_not_specialize), so that fewer shapes
compile kernels of their own. The passes compute in the dtype of the
coefficients, float32 (float64 for float64 inputs), and read and write the big tensors in
their own dtype and strides.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# The float constants of a layer arrive as one float64 tensor (a Python float argument would
# arrive in float32; as constexprs, every value of a decay would compile its own kernels).
K_ALPHA: tl.constexpr = tl.constexpr(0)
K_EPS: tl.constexpr = tl.constexpr(1)
K_BETA: tl.constexpr = tl.constexpr(2)
K_LS_EPS: tl.constexpr = tl.constexpr(3)
K_CLAMP: tl.constexpr = tl.constexpr(4)

# Error-compensation modes as compile-time integers.
ECM_NONE: tl.constexpr = tl.constexpr(0)
ECM_LS: tl.constexpr = tl.constexpr(1)
ECM_AC: tl.constexpr = tl.constexpr(2)


@triton.jit
def _tile(pid, N, N_CB, N_HB, BLOCK_NS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program id -> (sample indices, channel indices, spatial block index)."""
    hb = pid % N_HB
    rest = pid // N_HB
    n = (rest // N_CB) * BLOCK_NS + tl.arange(0, BLOCK_NS)
    c = (rest % N_CB) * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, c, hb


@triton.jit
def _offsets(n, c, hw, s_n, s_c, s_hw):
    """[samples, channels, positions] offsets; the sample term in int64 (a large batch can
    pass 2**31 elements)."""
    return (n.to(tl.int64)[:, None, None] * s_n + (c * s_c)[None, :, None]
            + (hw * s_hw)[None, None, :])


@triton.jit
def _nc_load(ptr, n, c, mask2, C):
    """A per-(n, c) coefficient as a [samples, channels, 1] tile."""
    return tl.load(ptr + n[:, None] * C + c[None, :], mask=mask2, other=0.0)[:, :, None]


@triton.jit(do_not_specialize=["N", "N_CB", "CHUNKS"])
def spatial_sums_kernel(x_ptr, sums_ptr, N, C, HW, sx_n, sx_c, sx_hw, N_CB, CHUNKS,
                        SPLIT: tl.constexpr, BLOCK_NS: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_HW: tl.constexpr):
    """sums[0, s, n, c] = sum of x, sums[1, s, n, c] = sum of x^2 over split s's positions."""
    n, c, split = _tile(tl.program_id(0), N, N_CB, SPLIT, BLOCK_NS, BLOCK_C)
    mask2 = (n < N)[:, None] & (c < C)[None, :]
    acc = tl.zeros([BLOCK_NS, BLOCK_C, BLOCK_HW], dtype=tl.float64)
    acc_sq = tl.zeros([BLOCK_NS, BLOCK_C, BLOCK_HW], dtype=tl.float64)
    for t in range(CHUNKS):
        hw = (split * CHUNKS + t) * BLOCK_HW + tl.arange(0, BLOCK_HW)
        mask = mask2[:, :, None] & (hw < HW)[None, None, :]
        xv = tl.load(x_ptr + _offsets(n, c, hw, sx_n, sx_c, sx_hw), mask=mask, other=0.0)
        xv = xv.to(tl.float64)
        acc += xv
        acc_sq += xv * xv
    out = sums_ptr + (split * N + n[:, None]) * C + c[None, :]
    tl.store(out, tl.sum(acc, axis=2), mask=mask2)
    tl.store(out + SPLIT * N * C, tl.sum(acc_sq, axis=2), mask=mask2)


@triton.jit
def _split_sums(sums_ptr, offs, mask, N, C, SPLIT: tl.constexpr):
    """The two per-(n, c) sums, adding the splits in order (unrolled: all loads in flight)."""
    first = tl.load(sums_ptr + offs, mask=mask, other=0.0)
    second = tl.load(sums_ptr + SPLIT * N * C + offs, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLIT):
        first += tl.load(sums_ptr + s * N * C + offs, mask=mask, other=0.0)
        second += tl.load(sums_ptr + (SPLIT + s) * N * C + offs, mask=mask, other=0.0)
    return first, second


@triton.jit
def _moments(sums_ptr, rows, c, mask, N, C, HW, SPLIT: tl.constexpr):
    """Spatial mean and biased variance of samples `rows` (float64; 0 where masked)."""
    total, total_sq = _split_sums(sums_ptr, rows[:, None] * C + c[None, :], mask, N, C, SPLIT)
    mean = total / HW
    # E[x^2] - E[x]^2 from float64 sums keeps its digits unless the mean exceeds the spread
    # by ~1e5 (as the eager CUDA path).
    return mean, tl.maximum(total_sq / HW - mean * mean, 0.0)


@triton.jit
def _compose(c1, e1, c2, e2):
    # Map 1 (s -> c1*s + e1) followed by map 2.
    return c2 * c1, c2 * e1 + e2


@triton.jit
def _states(coef, inp, state0):
    """Prefix states along axis 0 of s -> coef*s + inp, started from state0 (per column)."""
    c, e = tl.associative_scan((coef, inp), 0, _compose)
    return c * state0[None, :] + e


@triton.jit
def _last_row(t, is_last):
    """Row `is_last` of t as a vector (the carry out of a chunk)."""
    return tl.sum(tl.where(is_last[:, None], t, 0.0), axis=0)


@triton.jit
def _params(w_ptr, b_ptr, c, c_ok, BLOCK_C: tl.constexpr, HAS_AFFINE: tl.constexpr):
    """Weight and bias as float64 vectors (1 and 0 without affine: exact no-ops)."""
    if HAS_AFFINE:
        w = tl.load(w_ptr + c, mask=c_ok, other=1.0).to(tl.float64)
        b = tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float64)
    else:
        w = tl.full([BLOCK_C], 1.0, tl.float64)
        b = tl.zeros([BLOCK_C], dtype=tl.float64)
    return w, b


@triton.jit(do_not_specialize=["N", "LO", "NL"])
def forward_scan_kernel(sums_ptr, m_ptr, var_ptr, w_ptr, b_ptr, saved_ptr, coef_ptr,
                        consts_ptr, N, LO, NL, C, HW, SPLIT: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                        HAS_AFFINE: tl.constexpr, WRITE_COEF: tl.constexpr):
    """m, var over the N samples of the sums; saved[0..3] = mu, s2, m_i, r_i =
    1/sqrt(var_i + eps); without layer scaling also the pass coefficients A = r*w,
    B = b - A*m_i. saved and coef hold the NL samples from LO on (this rank's, in a chain
    over ranks whose sums were gathered; all of them otherwise: LO = 0, NL = N)."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    j = tl.arange(0, BLOCK_N)
    w, b = _params(w_ptr, b_ptr, c, c_ok, BLOCK_C, HAS_AFFINE)
    m_s = tl.load(m_ptr + c, mask=c_ok, other=0.0).to(tl.float64)
    var_s = tl.load(var_ptr + c, mask=c_ok, other=1.0).to(tl.float64)
    alpha_s = tl.load(consts_ptr + K_ALPHA)
    one_a = 1.0 - alpha_s
    eps = tl.load(consts_ptr + K_EPS)
    alpha = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float64) + alpha_s
    for n0 in range(0, N, BLOCK_N):
        i = n0 + j
        ok0 = (i < N)[:, None] & c_ok[None, :]
        ok1 = ((j >= 1) & (i <= N))[:, None] & c_ok[None, :]    # sample i-1, same chunk
        ok2 = ((j >= 2) & (i <= N + 1))[:, None] & c_ok[None, :]
        mu0, s2_0 = _moments(sums_ptr, i, c, ok0, N, C, HW, SPLIT)
        mu1, s2_1 = _moments(sums_ptr, i - 1, c, ok1, N, C, HW, SPLIT)
        mu2, _ = _moments(sums_ptr, i - 2, c, ok2, N, C, HW, SPLIT)
        # m_{i+1} = a*m_i + (1-a)*mu_i: m before sample i, and before sample i-1.
        m_i = _states(tl.where(ok1, alpha, 1.0), tl.where(ok1, one_a * mu1, 0.0), m_s)
        m_prev = _states(tl.where(ok2, alpha, 1.0), tl.where(ok2, one_a * mu2, 0.0), m_s)
        # var_{i+1} = a*var_i + (1-a)*(s2_i + a*d_i^2), d_i = mu_i - m_i.
        d1 = mu1 - m_prev
        var_i = _states(tl.where(ok1, alpha, 1.0),
                        tl.where(ok1, one_a * (s2_1 + alpha_s * d1 * d1), 0.0), var_s)
        r = 1.0 / tl.sqrt(var_i + eps)
        mine = ok0 & ((i >= LO) & (i < LO + NL))[:, None]
        offs = (i - LO)[:, None] * C + c[None, :]
        tl.store(saved_ptr + offs, mu0, mask=mine)
        tl.store(saved_ptr + NL * C + offs, s2_0, mask=mine)
        tl.store(saved_ptr + 2 * NL * C + offs, m_i, mask=mine)
        tl.store(saved_ptr + 3 * NL * C + offs, r, mask=mine)
        if WRITE_COEF:
            a0 = r * w[None, :]
            ty = coef_ptr.dtype.element_ty
            tl.store(coef_ptr + offs, a0.to(ty), mask=mine)
            tl.store(coef_ptr + NL * C + offs, (b[None, :] - a0 * m_i).to(ty), mask=mine)
        # The state after the chunk's last sample starts the next chunk.
        is_last = j == tl.minimum(N - n0, BLOCK_N) - 1
        d0 = mu0 - m_i
        var_s = _last_row(alpha_s * var_i + one_a * (s2_0 + alpha_s * d0 * d0), is_last)
        m_s = _last_row(alpha_s * m_i + one_a * mu0, is_last)
    tl.store(m_ptr + c, m_s.to(m_ptr.dtype.element_ty), mask=c_ok)
    tl.store(var_ptr + c, var_s.to(var_ptr.dtype.element_ty), mask=c_ok)


@triton.jit
def _affine_terms(saved_ptr, w, b, offs, mask, N, C):
    """Per (n, c): r, m_i, d = mu - m_i, s2, A0 = r*w and E_hw[z] = A0*d + b for the affine
    output z = w*y + b."""
    mu = tl.load(saved_ptr + offs, mask=mask, other=0.0)
    s2 = tl.load(saved_ptr + N * C + offs, mask=mask, other=0.0)
    m_i = tl.load(saved_ptr + 2 * N * C + offs, mask=mask, other=0.0)
    r = tl.load(saved_ptr + 3 * N * C + offs, mask=mask, other=0.0)
    a0 = r * w[None, :]
    d = mu - m_i
    return r, m_i, d, s2, a0, a0 * d + b[None, :]


@triton.jit(do_not_specialize=["N"])
def layer_scale_kernel(saved_ptr, w_ptr, b_ptr, f_ptr, coef_ptr, consts_ptr, N, C,
                       BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                       HAS_AFFINE: tl.constexpr):
    """f_n = 1/sqrt(mean over (c, hw) of z^2 + ls_eps), from E[z^2] = A0^2*s2 + E[z]^2
    per (n, c) (no pass over x); then the coefficients A = A0*f, B = (b - A0*m_i)*f."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = rows < N
    acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float64)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        mask = r_ok[:, None] & c_ok[None, :]
        w, b = _params(w_ptr, b_ptr, c, c_ok, BLOCK_C, HAS_AFFINE)
        _, _, _, s2, a0, mean_z = _affine_terms(saved_ptr, w, b, rows[:, None] * C + c[None, :],
                                                mask, N, C)
        acc += tl.where(mask, a0 * a0 * s2 + mean_z * mean_z, 0.0)
    f = 1.0 / tl.sqrt(tl.sum(acc, axis=1) / C + tl.load(consts_ptr + K_LS_EPS))
    tl.store(f_ptr + rows, f, mask=r_ok)
    ty = coef_ptr.dtype.element_ty
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        mask = r_ok[:, None] & c_ok[None, :]
        w, b = _params(w_ptr, b_ptr, c, c_ok, BLOCK_C, HAS_AFFINE)
        offs = rows[:, None] * C + c[None, :]
        _, m_i, _, _, a0, _ = _affine_terms(saved_ptr, w, b, offs, mask, N, C)
        tl.store(coef_ptr + offs, (a0 * f[:, None]).to(ty), mask=mask)
        tl.store(coef_ptr + N * C + offs, ((b[None, :] - a0 * m_i) * f[:, None]).to(ty),
                 mask=mask)


@triton.jit
def _clamp_kept(z, clamp):
    """Where the clamp lets z (and its gradient) through; NaN is not kept."""
    return (z >= -clamp) & (z <= clamp)


@triton.jit
def _clamp_value(consts_ptr, dtype: tl.constexpr):
    # In the dtype of the pass, as the eager ops compare a float tensor with the clamp.
    return tl.load(consts_ptr + K_CLAMP).to(dtype)


@triton.jit(do_not_specialize=["N", "N_CB", "N_HB"])
def scale_shift_kernel(x_ptr, coef_ptr, out_ptr, consts_ptr, N, C, HW, sx_n, sx_c, sx_hw,
                       so_n, so_c, so_hw, N_CB, N_HB, ECM: tl.constexpr,
                       BLOCK_NS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """out = x*A[n, c] + B[n, c], clamped to [-clamp, clamp] for 'ac'."""
    n, c, hb = _tile(tl.program_id(0), N, N_CB, N_HB, BLOCK_NS, BLOCK_C)
    hw = hb * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask2 = (n < N)[:, None] & (c < C)[None, :]
    mask = mask2[:, :, None] & (hw < HW)[None, None, :]
    a = _nc_load(coef_ptr, n, c, mask2, C)
    b = _nc_load(coef_ptr + N * C, n, c, mask2, C)
    xv = tl.load(x_ptr + _offsets(n, c, hw, sx_n, sx_c, sx_hw), mask=mask, other=0.0)
    # fma explicitly: the backward recomputes z the same way to find the clamped elements.
    z = tl.fma(xv.to(a.dtype), a, b)
    if ECM == ECM_AC:
        clamp = _clamp_value(consts_ptr, z.dtype)
        # Two selects, not tl.clamp: Triton 3.8 lowers a symmetric tl.clamp to an instruction
        # with no float64 form on sm_90. NaN fails both tests and passes through, as in torch.
        z = tl.where(z < -clamp, -clamp, tl.where(z > clamp, clamp, z))
    tl.store(out_ptr + _offsets(n, c, hw, so_n, so_c, so_hw), z.to(out_ptr.dtype.element_ty),
             mask=mask)


@triton.jit(do_not_specialize=["N", "N_CB", "CHUNKS"])
def grad_sums_kernel(g_ptr, x_ptr, saved_ptr, coef_ptr, consts_ptr, sums_ptr, N, C, HW, sg_n,
                     sg_c, sg_hw, sx_n, sx_c, sx_hw, N_CB, CHUNKS, ECM: tl.constexpr,
                     SPLIT: tl.constexpr, BLOCK_NS: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """sums[0, s, n, c] = sum of G, sums[1, s, n, c] = sum of G*(x - mu) over split s, with
    G the gradient at the affine output (grad_out, zeroed where the 'ac' clamp acted)."""
    n, c, split = _tile(tl.program_id(0), N, N_CB, SPLIT, BLOCK_NS, BLOCK_C)
    mask2 = (n < N)[:, None] & (c < C)[None, :]
    mu = _nc_load(saved_ptr, n, c, mask2, C)
    if ECM == ECM_AC:
        a = _nc_load(coef_ptr, n, c, mask2, C)
        b = _nc_load(coef_ptr + N * C, n, c, mask2, C)
        clamp = _clamp_value(consts_ptr, a.dtype)
    acc = tl.zeros([BLOCK_NS, BLOCK_C, BLOCK_HW], dtype=tl.float64)
    acc_x = tl.zeros([BLOCK_NS, BLOCK_C, BLOCK_HW], dtype=tl.float64)
    for t in range(CHUNKS):
        hw = (split * CHUNKS + t) * BLOCK_HW + tl.arange(0, BLOCK_HW)
        mask = mask2[:, :, None] & (hw < HW)[None, None, :]
        xv = tl.load(x_ptr + _offsets(n, c, hw, sx_n, sx_c, sx_hw), mask=mask, other=0.0)
        gv = tl.load(g_ptr + _offsets(n, c, hw, sg_n, sg_c, sg_hw), mask=mask, other=0.0)
        gv = gv.to(tl.float64)
        if ECM == ECM_AC:
            gv = tl.where(_clamp_kept(tl.fma(xv.to(a.dtype), a, b), clamp), gv, 0.0)
        # Centred before the product: sum(g*x) - mu*sum(g) would cancel for offset inputs.
        acc += gv
        acc_x += gv * (xv.to(tl.float64) - mu)
    out = sums_ptr + (split * N + n[:, None]) * C + c[None, :]
    tl.store(out, tl.sum(acc, axis=2), mask=mask2)
    tl.store(out + SPLIT * N * C, tl.sum(acc_x, axis=2), mask=mask2)


@triton.jit
def _layer_scale_k(sums_ptr, saved_ptr, w_ptr, b_ptr, f, rows, r_ok, N, C, HW,
                   SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                   HAS_AFFINE: tl.constexpr):
    """k of samples `rows` (grad_layer_scale_kernel), given their f."""
    acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float64)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        mask = r_ok[:, None] & c_ok[None, :]
        w, b = _params(w_ptr, b_ptr, c, c_ok, BLOCK_C, HAS_AFFINE)
        offs = rows[:, None] * C + c[None, :]
        sum_g, sum_gxc = _split_sums(sums_ptr, offs, mask, N, C, SPLIT)
        _, _, _, _, a0, mean_z = _affine_terms(saved_ptr, w, b, offs, mask, N, C)
        acc += a0 * sum_gxc + mean_z * sum_g
    return f * f * f * tl.sum(acc, axis=1) / (C * HW)


@triton.jit(do_not_specialize=["N"])
def grad_layer_scale_kernel(sums_ptr, saved_ptr, w_ptr, b_ptr, fk_ptr, N, C, HW,
                            SPLIT: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_C: tl.constexpr, HAS_AFFINE: tl.constexpr):
    """k_n = f_n^3/(C*H*W) * sum over (c, hw) of G*z, the layer-scaling term of
    dL/dz = f*G - k*z; sum_hw G*z = A0*sum G*(x - mu) + E[z]*sum G. fk[0] = f, fk[1] = k."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = rows < N
    f = tl.load(fk_ptr + rows, mask=r_ok, other=0.0)
    k = _layer_scale_k(sums_ptr, saved_ptr, w_ptr, b_ptr, f, rows, r_ok, N, C, HW, SPLIT,
                       BLOCK_N, BLOCK_C, HAS_AFFINE)
    tl.store(fk_ptr + N + rows, k, mask=r_ok)


@triton.jit
def _control_terms(sums_ptr, saved_ptr, fk_ptr, w, b, rows, row_ok, c, c_ok, N, C, HW, one_b,
                   ECM: tl.constexpr, SPLIT: tl.constexpr):
    """Per (n, c) of samples `rows` (where row_ok), what the control process needs: v's
    coefficient 1 - (1-b)*E[y^2] and input E[g*y], E[g], E[y] = r*d, r, m_i, A0, the
    layer-scaling k*A0 (0 without it), and the per-(n, c) sums of dL/dz and dL/dz*y (the
    affine gradients). Where masked: all 0 and the coefficient 1, an identity map, whatever
    lies in memory there (shifted rows index -1 and -2 at a batch's start)."""
    if ECM == ECM_LS:
        f = tl.load(fk_ptr + rows, mask=row_ok, other=0.0)
        k = tl.load(fk_ptr + N + rows, mask=row_ok, other=0.0)
    else:
        f = tl.zeros_like(rows).to(tl.float64)   # unused
        k = f
    return _control_terms_fk(sums_ptr, saved_ptr, f, k, w, b, rows, row_ok, c, c_ok, N, C, HW,
                             one_b, ECM, SPLIT)


@triton.jit
def _control_terms_fk(sums_ptr, saved_ptr, f, k, w, b, rows, row_ok, c, c_ok, N, C, HW, one_b,
                      ECM: tl.constexpr, SPLIT: tl.constexpr):
    """_control_terms, with the layer-scaling f and k of the samples given ('ls' only)."""
    mask = row_ok[:, None] & c_ok[None, :]
    offs = rows[:, None] * C + c[None, :]
    sum_g, sum_gxc = _split_sums(sums_ptr, offs, mask, N, C, SPLIT)
    r, m_i, d, s2, a0, mean_z = _affine_terms(saved_ptr, w, b, offs, mask, N, C)
    if ECM == ECM_LS:
        f = f[:, None]
        k = k[:, None]
        ka0 = k * a0
        # dL/dz = f*G - k*z, z = A0*(x - mu) + E[z]
        sum_dz = tl.where(mask, f * sum_g - (k * HW) * mean_z, 0.0)
        sum_dzxc = f * sum_gxc - (ka0 * HW) * s2
    else:
        ka0 = tl.zeros_like(r)
        sum_dz = sum_g
        sum_dzxc = sum_gxc
    sum_dzy = r * (sum_dzxc + d * sum_dz)           # y = (x - m_i)*r = r*(x - mu) + r*d
    w_hw = w[None, :] / HW                          # g = w*dz at the core output y
    coef = tl.where(mask, 1.0 - one_b * (r * r) * (s2 + d * d), 1.0)
    return coef, sum_dzy * w_hw, sum_dz * w_hw, r * d, r, m_i, a0, ka0, sum_dz, sum_dzy


@triton.jit(do_not_specialize=["N", "WORLD"])
def chain_terms_kernel(sums_ptr, saved_ptr, w_ptr, b_ptr, fk_ptr, terms_ptr, consts_ptr, N, C,
                       HW, WORLD, ECM: tl.constexpr, SPLIT: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                       HAS_AFFINE: tl.constexpr):
    """In a chain over WORLD ranks, what this rank's samples feed the control process, to be
    gathered: terms[0..3] = v's coefficient 1 - (1-b)*E[y^2], v's input E[g*y]/WORLD, and
    u's input terms r*E[g]/WORLD and r*E[y] (u's input is r*E[g] - (1-b)*v*r*E[y]). The
    gradient reaching a rank is WORLD times the one-device one: the inputs are brought back
    to one-device scale. With layer scaling this first computes k, as
    grad_layer_scale_kernel (which a chained backward does not launch)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = rows < N
    if ECM == ECM_LS:
        f = tl.load(fk_ptr + rows, mask=r_ok, other=0.0)
        k = _layer_scale_k(sums_ptr, saved_ptr, w_ptr, b_ptr, f, rows, r_ok, N, C, HW, SPLIT,
                           BLOCK_N, BLOCK_C, HAS_AFFINE)
        tl.store(fk_ptr + N + rows, k, mask=r_ok)
    else:
        f = tl.zeros([BLOCK_N], dtype=tl.float64)   # unused
        k = f
    one_b = 1.0 - tl.load(consts_ptr + K_BETA)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        mask = r_ok[:, None] & c_ok[None, :]
        w, b = _params(w_ptr, b_ptr, c, c_ok, BLOCK_C, HAS_AFFINE)
        coef, ev, eg, ey, r, _, _, _, _, _ = _control_terms_fk(
            sums_ptr, saved_ptr, f, k, w, b, rows, r_ok, c, c_ok, N, C, HW, one_b, ECM, SPLIT)
        offs = rows[:, None] * C + c[None, :]
        tl.store(terms_ptr + offs, coef, mask=mask)
        tl.store(terms_ptr + N * C + offs, ev / WORLD, mask=mask)
        tl.store(terms_ptr + 2 * N * C + offs, r * eg / WORLD, mask=mask)
        tl.store(terms_ptr + 3 * N * C + offs, r * ey, mask=mask)


@triton.jit
def _chain_terms(terms_ptr, rows, row_ok, c, c_ok, N, C):
    """The gathered terms of samples `rows` (chain_terms_kernel); where masked the
    identity map (coefficient 1, inputs 0)."""
    mask = row_ok[:, None] & c_ok[None, :]
    offs = rows[:, None] * C + c[None, :]
    coef = tl.load(terms_ptr + offs, mask=mask, other=1.0)
    ev = tl.load(terms_ptr + N * C + offs, mask=mask, other=0.0)
    ueg = tl.load(terms_ptr + 2 * N * C + offs, mask=mask, other=0.0)
    uey = tl.load(terms_ptr + 3 * N * C + offs, mask=mask, other=0.0)
    return coef, ev, ueg, uey


@triton.jit
def _finite(t):
    # Not NaN (which fails every comparison) and not infinite: |t| <= float64's largest
    # value, a literal too large for float32, so the comparison is in float64.
    return tl.abs(t) <= 1.7976931348623157e308


@triton.jit(do_not_specialize=["N", "LO", "NL", "WORLD"])
def backward_scan_kernel(sums_ptr, saved_ptr, fk_ptr, w_ptr, b_ptr, u_ptr, v_ptr, gw_ptr,
                         gb_ptr, coef_ptr, terms_ptr, consts_ptr, N, LO, NL, C, HW, WORLD,
                         ECM: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_C: tl.constexpr, HAS_AFFINE: tl.constexpr,
                         CHAIN: tl.constexpr):
    """The control process over the batch: v_{i+1} = (1 - (1-b)*E[y_i^2])*v_i + E[g_i*y_i],
    u_{i+1} = b*u_i + r_i*E[t_i] with E[t_i] = E[g_i] - (1-b)*v_i*E[y_i]; u, v updated; the
    affine gradients; and the coefficients of grad_x = G*A - x*Q + R (G*A = r*g*f):
    Q = (1-b)*v_i*r_i^2 + k*A0^2, R = Q*m_i - (1-b)*u_i - k*A0*b.

    With CHAIN (a chain over WORLD ranks) the recurrences run over the N samples of the
    gathered terms (chain_terms_kernel: at one-device scale), the same on every rank, while
    sums, saved, fk and the coefficients Q, R are this rank's NL samples from LO on, with
    v_i and u_i at this rank's gradient scale (times WORLD); the affine gradients are this
    rank's samples' alone. Without: LO = 0, NL = N, WORLD = 1 and terms_ptr unused."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    j = tl.arange(0, BLOCK_N)
    w, b = _params(w_ptr, b_ptr, c, c_ok, BLOCK_C, HAS_AFFINE)
    u_old = tl.load(u_ptr + c, mask=c_ok, other=0.0)
    v_old = tl.load(v_ptr + c, mask=c_ok, other=0.0)
    u_s = u_old.to(tl.float64)
    v_s = v_old.to(tl.float64)
    grad_w = tl.zeros([BLOCK_C], dtype=tl.float64)
    grad_b = tl.zeros([BLOCK_C], dtype=tl.float64)
    beta_s = tl.load(consts_ptr + K_BETA)
    one_b = 1.0 - beta_s
    beta = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float64) + beta_s
    ty = coef_ptr.dtype.element_ty
    for n0 in range(0, N, BLOCK_N):
        i = n0 + j
        row0, row1, row2 = i < N, (j >= 1) & (i <= N), (j >= 2) & (i <= N + 1)
        ok1 = row1[:, None] & c_ok[None, :]      # sample i-1, in this chunk
        is_last = j == tl.minimum(N - n0, BLOCK_N) - 1
        if CHAIN:
            coef0, ev0, ueg0, uey0 = _chain_terms(terms_ptr, i, row0, c, c_ok, N, C)
            coef1, ev1, ueg1, uey1 = _chain_terms(terms_ptr, i - 1, row1, c, c_ok, N, C)
            coef2, ev2, _, _ = _chain_terms(terms_ptr, i - 2, row2, c, c_ok, N, C)
            loc = i - LO                         # this rank's samples, rows 0..NL-1 of its own
            mine = row0 & (loc >= 0) & (loc < NL)
            _, _, _, _, r0, m0, a0, ka0, sum_dz, sum_dzy = _control_terms(
                sums_ptr, saved_ptr, fk_ptr, w, b, loc, mine, c, c_ok, NL, C, HW, one_b, ECM,
                SPLIT)
            v_i = _states(coef1, ev1, v_s)
            v_prev = _states(coef2, ev2, v_s)
            u_i = _states(tl.where(ok1, beta, 1.0), ueg1 - one_b * v_prev * uey1, u_s)
            grad_w += tl.sum(sum_dzy, axis=0)
            grad_b += tl.sum(sum_dz, axis=0)
            v_r = v_i * WORLD                    # the state's terms at this rank's scale
            q = one_b * v_r * r0 * r0 + ka0 * a0
            rest = q * m0 - one_b * (u_i * WORLD) - ka0 * b[None, :]
            offs = loc[:, None] * C + c[None, :]
            mine2 = mine[:, None] & c_ok[None, :]
            tl.store(coef_ptr + offs, q.to(ty), mask=mine2)
            tl.store(coef_ptr + NL * C + offs, rest.to(ty), mask=mine2)
            u_s = _last_row(beta_s * u_i + ueg0 - one_b * v_i * uey0, is_last)
            v_s = _last_row(coef0 * v_i + ev0, is_last)
        else:
            ok0 = row0[:, None] & c_ok[None, :]
            coef0, ev0, eg0, ey0, r0, m0, a0, ka0, sum_dz, sum_dzy = _control_terms(
                sums_ptr, saved_ptr, fk_ptr, w, b, i, row0, c, c_ok, N, C, HW, one_b, ECM,
                SPLIT)
            coef1, ev1, eg1, ey1, r1, _, _, _, _, _ = _control_terms(
                sums_ptr, saved_ptr, fk_ptr, w, b, i - 1, row1, c, c_ok, N, C, HW, one_b, ECM,
                SPLIT)
            coef2, ev2, _, _, _, _, _, _, _, _ = _control_terms(
                sums_ptr, saved_ptr, fk_ptr, w, b, i - 2, row2, c, c_ok, N, C, HW, one_b, ECM,
                SPLIT)
            # v before sample i and before sample i-1 (masked rows are identity maps).
            v_i = _states(coef1, ev1, v_s)
            v_prev = _states(coef2, ev2, v_s)
            mean_t1 = eg1 - one_b * v_prev * ey1
            u_i = _states(tl.where(ok1, beta, 1.0), r1 * mean_t1, u_s)
            grad_w += tl.sum(sum_dzy, axis=0)
            grad_b += tl.sum(sum_dz, axis=0)
            q = one_b * v_i * r0 * r0 + ka0 * a0
            rest = q * m0 - one_b * u_i - ka0 * b[None, :]
            offs = i[:, None] * C + c[None, :]
            tl.store(coef_ptr + offs, q.to(ty), mask=ok0)
            tl.store(coef_ptr + N * C + offs, rest.to(ty), mask=ok0)
            u_s = _last_row(beta_s * u_i + r0 * (eg0 - one_b * v_i * ey0), is_last)
            v_s = _last_row(coef0 * v_i + ev0, is_last)
    # A channel whose new u or v is not finite in the buffers' dtype (a non-finite incoming
    # gradient: float16 loss scaling overflowed, and GradScaler skips the step) keeps its
    # state, which would otherwise stay non-finite for good.
    u_new = u_s.to(u_ptr.dtype.element_ty)
    v_new = v_s.to(v_ptr.dtype.element_ty)
    finite = _finite(u_new.to(tl.float64)) & _finite(v_new.to(tl.float64))
    tl.store(u_ptr + c, tl.where(finite, u_new, u_old), mask=c_ok)
    tl.store(v_ptr + c, tl.where(finite, v_new, v_old), mask=c_ok)
    if HAS_AFFINE:
        tl.store(gw_ptr + c, grad_w.to(gw_ptr.dtype.element_ty), mask=c_ok)
        tl.store(gb_ptr + c, grad_b.to(gb_ptr.dtype.element_ty), mask=c_ok)


@triton.jit(do_not_specialize=["N", "N_CB", "N_HB"])
def combine_kernel(g_ptr, x_ptr, fwd_coef_ptr, coef_ptr, out_ptr, consts_ptr, N, C, HW, sg_n,
                   sg_c, sg_hw, sx_n, sx_c, sx_hw, so_n, so_c, so_hw, N_CB, N_HB,
                   ECM: tl.constexpr, BLOCK_NS: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """grad_x = G*A - x*Q + R, G = grad_out (masked where the 'ac' clamp acted)."""
    n, c, hb = _tile(tl.program_id(0), N, N_CB, N_HB, BLOCK_NS, BLOCK_C)
    hw = hb * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask2 = (n < N)[:, None] & (c < C)[None, :]
    mask = mask2[:, :, None] & (hw < HW)[None, None, :]
    a = _nc_load(fwd_coef_ptr, n, c, mask2, C)
    q = _nc_load(coef_ptr, n, c, mask2, C)
    rest = _nc_load(coef_ptr + N * C, n, c, mask2, C)
    xv = tl.load(x_ptr + _offsets(n, c, hw, sx_n, sx_c, sx_hw), mask=mask, other=0.0)
    xv = xv.to(a.dtype)
    gv = tl.load(g_ptr + _offsets(n, c, hw, sg_n, sg_c, sg_hw), mask=mask, other=0.0)
    gv = gv.to(a.dtype)
    if ECM == ECM_AC:
        b = _nc_load(fwd_coef_ptr + N * C, n, c, mask2, C)
        gv = tl.where(_clamp_kept(tl.fma(xv, a, b), _clamp_value(consts_ptr, a.dtype)), gv,
                      0.0)
    grad_x = tl.fma(gv, a, tl.fma(-xv, q, rest))
    tl.store(out_ptr + _offsets(n, c, hw, so_n, so_c, so_hw),
             grad_x.to(out_ptr.dtype.element_ty), mask=mask)


# Whether these kernels run in Triton's interpreter (on CPU tensors): decided when the
# decorators above ran, from TRITON_INTERPRET at that moment.
INTERPRETED = isinstance(scale_shift_kernel, InterpretedFunction)
