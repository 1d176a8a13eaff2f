"""The fused training-mode Online Normalization op: core, affine and error compensation.

Forward: one reduction pass over x for per-(sample, channel) statistics, the recurrences over
the batch in float64 on per-(n, c) tensors, then one elementwise pass out = x*A[n,c] + B[n,c]
that folds normalization, affine and layer scaling (whose per-sample factor follows
analytically from the (n, c) statistics). Backward: the paper's control process (not the
autograd gradient of the forward), done the same way: one reduction pass over (grad, x),
float64 per-(n, c) math, then grad_x = g*P[n,c] + x*Q[n,c] + R[n,c].

Every (n, c) quantity is a float64 (C, N) tensor, samples last: the recurrences scan along
the contiguous dimension, per-channel vectors broadcast as (C, 1) columns and per-sample
factors (layer scaling) as (1, N) rows.

The Function never sees the module: the state buffers come in as tensors (one
OnlineNormState) and are updated in place, so deep copies, pickling and DDP replicas each
keep their own state; the layer's constants come in as one OnlineNormConstants
(norms.online_inputs).

With a `chain` (norms.sample_chain.SampleChain, in a data-parallel trial) the recurrences run
over the samples of every rank: the per-sample statistics are all-gathered before each
recurrence and each rank keeps its own columns after it; what feeds the control state is
divided by the world size (each rank's gradient is that many times the one-device one) and
the state's share of the input gradient multiplied back.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from norms import passes
from norms.online_inputs import OnlineNormConstants, OnlineNormState
from norms.recurrences import constant_decay, varying_decay


@functools.lru_cache(maxsize=8)
def _one(device: torch.device) -> torch.Tensor:
    """A float64 scalar 1, cached: addcmul's input for 1 - c*a*b in one op."""
    return torch.ones((), dtype=torch.float64, device=device)


def keep_finite_state(u: torch.Tensor, v: torch.Tensor, u_new: torch.Tensor,
                      v_new: torch.Tensor) -> None:
    """u, v <- u_new, v_new in the channels where both are finite (in the buffers' dtype);
    the others keep their state.

    A non-finite incoming gradient (float16 loss scaling overflowing, which GradScaler
    answers by skipping the step) would otherwise make u or v non-finite for good, and every
    later gradient NaN. The mask is computed on the device: no host synchronization."""
    u_new, v_new = u_new.to(u.dtype), v_new.to(v.dtype)
    # inf - inf and NaN + anything are not finite: one test covers both states.
    finite = torch.isfinite(u_new + v_new)
    u.copy_(torch.where(finite, u_new, u))
    v.copy_(torch.where(finite, v_new, v))


class OnlineNormFunction(torch.autograd.Function):
    """Training-mode Online Normalization on an (N, C, H, W) input; updates m, var, u, v."""

    # Each small per-(n, c) op costs a few microseconds whatever its size, so the float64 math
    # below is written to use as few as it can: merged multiply-adds, constants folded into
    # Python floats, float32 parameters promoted by the ops themselves, nothing computed
    # twice between forward and backward.
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, state: OnlineNormState,
                constants: OnlineNormConstants, chain: Any = None) -> torch.Tensor:
        a, eps, ecm = constants.alpha_fwd, constants.eps, constants.ecm
        m, var = state.m, state.var
        mu, s2 = passes.spatial_stats(x)
        batch_mu, batch_s2 = (chain.gather(mu), chain.gather(s2)) if chain else (mu, s2)
        # Mean and variance states seen by each sample (columns 0..N-1) and after the batch (N).
        m_all = constant_decay(m, batch_mu, a, 1.0 - a)
        m_i = m_all[:, :-1]
        d = batch_mu - m_i
        # (1-a)*s2 + a*(1-a)*d^2 = (1-a)*(s2 + a*d^2)
        var_all = constant_decay(var, torch.addcmul(batch_s2, d, d, value=a), a, 1.0 - a)
        r = var_all[:, :-1].add(eps).rsqrt_()
        m.copy_(m_all[:, -1])
        var.copy_(var_all[:, -1])
        if chain:   # from here on, this rank's samples only
            m_i, d, r = chain.local(m_i), chain.local(d), chain.local(r)

        # z = a0*x + b0 = w*y + b, y = (x - m_i)*r; float32 parameters promote to float64.
        a0 = r * weight[:, None] if weight is not None else r
        if bias is not None:
            b0 = torch.addcmul(bias[:, None], a0, m_i, value=-1)
        else:
            b0 = torch.mul(a0, m_i).neg_()
        mean_z = torch.addcmul(b0, a0, mu)          # E_hw[z]
        k_scale = f = None
        # The coefficients of the pass over x, written straight into x's dtype and layout.
        scale, shift = passes.coefficient(x), passes.coefficient(x)
        if ecm == "ls":
            # E_hw[z^2] = Var(z) + E[z]^2 = a0^2*s2 + E[z]^2, no pass over x needed.
            mean_z2 = torch.addcmul(mean_z * mean_z, a0 * a0, s2)
            f = mean_z2.mean(0, keepdim=True).add_(constants.ls_eps).rsqrt_()
            k_scale = f.pow(3).mul_(1.0 / (x.shape[1] * x.shape[2] * x.shape[3]))
            torch.mul(a0, f, out=scale)
            torch.mul(b0, f, out=shift)
        else:
            scale.copy_(a0)
            shift.copy_(b0)
        out = passes.scale_shift(x, scale, shift)
        if ecm == "ac":
            out.clamp_(-constants.clamp_val, constants.clamp_val)

        ctx.save_for_backward(x, weight, bias)
        ctx.small = (mu, s2, d, m_i, r, a0, mean_z, f, k_scale, scale, shift)
        ctx.state = state
        ctx.constants = constants
        ctx.chain = chain
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        mu, s2, d, m_i, r, a0, mean_z, f, k_scale, scale, shift = ctx.small
        u, v = ctx.state.u, ctx.state.v
        constants = ctx.constants
        beta, ecm, clamp_val = constants.alpha_bkw, constants.ecm, constants.clamp_val
        chain = ctx.chain
        hw = x.shape[2] * x.shape[3]

        grad = grad_out
        if ecm == "ac":
            z = passes.scale_shift(x, scale, shift)   # without ls these are a0 and b0
            # A select, not a product: a non-finite gradient where the clamp acted stops
            # here (inf*0 would be NaN), as in the Triton kernels and clamp's own gradient.
            grad = torch.where((z >= -clamp_val) & (z <= clamp_val), grad_out, 0)
            del z
        # sum_hw G and sum_hw G*(x - mu), per (n, c).
        sum_g, sum_gxc = passes.grad_sums(grad, x, mu)

        # dz = dL/dz, z = w*y + b the affine output; with ls, dz = f*G - k*z where
        # k = f^3/M * sum_(c,hw) G*z (M = C*H*W) per sample, since out = f*z.
        if ecm == "ls":
            sum_gz = torch.addcmul(a0 * sum_gxc, mean_z, sum_g).sum(0, keepdim=True)
            k = k_scale * sum_gz
            ka0 = k * a0
            sum_dz = torch.addcmul(f * sum_g, k, mean_z, value=-hw)
            # sum dz*(x - mu) = f*sum G*(x - mu) - k*a0*sum (x - mu)^2
            sum_dzxc = torch.addcmul(f * sum_gxc, ka0, s2, value=-hw)
        else:
            ka0 = None
            sum_dz, sum_dzxc = sum_g, sum_gxc
        sum_dzy = r * torch.addcmul(sum_dzxc, d, sum_dz)   # sum_hw dz*y, y = (x - m_i)*r

        grad_weight = sum_dzy.sum(1).to(weight.dtype) if weight is not None else None
        grad_bias = sum_dz.sum(1).to(bias.dtype) if bias is not None else None

        # The control process on g = w*dz, the gradient at the core output y, with
        # E_hw[y] = r*d and E_hw[y^2] = r^2*(s2 + d^2).
        one_b = 1.0 - beta
        # Not in place: for float64 parameters .double() is the parameter itself.
        w_hw = weight.double()[:, None] / hw if weight is not None else 1.0 / hw
        r2 = r * r
        coef = torch.addcmul(_one(r.device), r2, torch.addcmul(s2, d, d), value=-one_b)
        if chain:
            # at one-device scale: each rank's gradient is `world` times the one-device one
            mean_dz = sum_dz * (w_hw / chain.world)
            v_all = varying_decay(v, chain.gather(coef),
                                  chain.gather(sum_dzy * (w_hw / chain.world)))
            v_i = chain.local(v_all[:, :-1])
        else:
            mean_dz = sum_dz * w_hw
            v_all = varying_decay(v, coef, sum_dzy * w_hw)
            v_i = v_all[:, :-1]
        mean_t = torch.addcmul(mean_dz, v_i, r * d, value=-one_b)
        u_in = r * mean_t
        u_all = constant_decay(u, chain.gather(u_in) if chain else u_in, beta, 1.0)
        u_i = chain.local(u_all[:, :-1]) if chain else u_all[:, :-1]
        keep_finite_state(u, v, u_all[:, -1], v_all[:, -1])
        if chain:   # the state's terms back at this rank's gradient scale
            v_i, u_i = v_i * chain.world, u_i * chain.world

        grad_x = None
        if ctx.needs_input_grad[0]:
            # grad_x = r*g - (1-b)*v*r^2*(x - m_i) - (1-b)*u, g = w*dz, dz = f*G - k*z:
            # G's coefficient is r*w*f = scale, x's is -q with q = (1-b)*v*r^2 + k*a0^2, and
            # the rest q*m_i - (1-b)*u - k*a0*b (b0 = b - a0*m_i).
            q = v_i * r2.mul_(one_b)
            if ka0 is not None:
                q.addcmul_(ka0, a0)
            c = torch.addcmul(u_i.mul(-one_b), q, m_i)
            # the last op writes the pass's coefficient: float64 until that one rounding
            c_out = passes.coefficient(x)
            if ka0 is not None and bias is not None:
                torch.addcmul(c, ka0, bias[:, None], value=-1, out=c_out)
            else:
                c_out.copy_(c)
            grad_x = passes.combine(grad, x, scale, q, c_out)
        return grad_x, grad_weight, grad_bias, None, None, None
