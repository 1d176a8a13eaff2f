"""The fused training-mode Online Normalization op: core, affine and error compensation.

Forward: one reduction pass over x for per-(sample, channel) statistics, the recurrences over
the batch in float64 on (N, C) tensors, then one elementwise pass out = x*A[n,c] + B[n,c]
that folds normalization, affine and layer scaling (whose per-sample factor follows
analytically from the (n, c) statistics). Backward: the paper's control process (not the
autograd gradient of the forward), done the same way: one reduction pass over (grad, x),
float64 (N, C) math, then grad_x = g*P[n,c] + x*Q[n,c] + R[n,c].

The Function never sees the module: the state buffers come in as tensors and are updated in
place, so deep copies, pickling and DDP replicas each keep their own state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from norms import passes
from norms.recurrences import constant_decay, varying_decay

ECM_MODES = ("ls", "ac", "none")


class OnlineNormFunction(torch.autograd.Function):
    """Training-mode Online Normalization on an (N, C, H, W) input; updates m, var, u, v."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, m: torch.Tensor, var: torch.Tensor,
                u: torch.Tensor, v: torch.Tensor, alpha_fwd: float, alpha_bkw: float,
                eps: float, ecm: str, ls_eps: float, clamp_val: float) -> torch.Tensor:
        a = alpha_fwd
        mu, s2 = passes.spatial_stats(x)
        # Mean and variance states seen by each sample (rows 0..N-1) and after the batch (N).
        m_all = constant_decay(m.double(), mu, a, 1.0 - a)
        m_i = m_all[:-1]
        d = mu - m_i
        # (1-a)*s2 + a*(1-a)*d^2 = (1-a)*(s2 + a*d^2)
        var_all = constant_decay(var.double(), torch.addcmul(s2, d, d, value=a), a, 1.0 - a)
        r = var_all[:-1].add(eps).rsqrt_()
        m.copy_(m_all[-1])
        var.copy_(var_all[-1])

        w = weight.detach().double() if weight is not None else None
        b = bias.detach().double() if bias is not None else None
        a0 = r * w if w is not None else r         # z = a0*x + b0 = w*y + b
        b0 = a0 * -m_i
        if b is not None:
            b0 += b
        mean_y = r * d                              # E_hw[y] and E_hw[y^2] per (n, c)
        mean_y2 = r.square().mul_(torch.addcmul(s2, d, d))
        mean_z = torch.addcmul(b0, a0, mu)          # E_hw[z]
        k_scale = f = None
        scale, shift = a0, b0
        if ecm == "ls":
            # E_hw[z^2] = Var(z) + E[z]^2 = a0^2*s2 + E[z]^2, no pass over x needed.
            mean_z2 = torch.addcmul(mean_z.square(), a0.square(), s2)
            f = mean_z2.mean(1, keepdim=True).add_(ls_eps).rsqrt_()
            k_scale = f.pow(3).div_(x.shape[1] * x.shape[2] * x.shape[3])
            scale, shift = a0 * f, b0 * f
        out = passes.scale_shift(x, scale, shift)
        if ecm == "ac":
            out.clamp_(-clamp_val, clamp_val)

        ctx.save_for_backward(x, weight, bias)
        ctx.small = (mu, s2, d, m_i, r, w, a0, b0, mean_y, mean_y2, mean_z, f, k_scale, scale)
        ctx.state = (u, v)
        ctx.config = (alpha_bkw, ecm, clamp_val)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        mu, s2, d, m_i, r, w, a0, b0, mean_y, mean_y2, mean_z, f, k_scale, scale = ctx.small
        u, v = ctx.state
        beta, ecm, clamp_val = ctx.config
        hw = x.shape[2] * x.shape[3]

        grad = grad_out
        if ecm == "ac":
            z = passes.scale_shift(x, a0, b0)
            grad = grad_out * ((z >= -clamp_val) & (z <= clamp_val))
            del z
        # sum_hw G and sum_hw G*(x - mu), per (n, c).
        sum_g, sum_gxc = passes.grad_sums(grad, x, mu)

        # dz = dL/dz, z = w*y + b the affine output; with ls, dz = f*G - k*z where
        # k = f^3/M * sum_(c,hw) G*z (M = C*H*W) per sample, since out = f*z.
        if ecm == "ls":
            sum_gz = torch.addcmul(a0 * sum_gxc, mean_z, sum_g).sum(1, keepdim=True)
            k = k_scale * sum_gz
            sum_dz = torch.addcmul(f * sum_g, k, mean_z, value=-hw)
            # sum dz*(x - mu) = f*sum G*(x - mu) - k*a0*sum (x - mu)^2
            sum_dzxc = torch.addcmul(f * sum_gxc, k * a0, s2, value=-hw)
        else:
            k = None
            sum_dz, sum_dzxc = sum_g, sum_gxc
        sum_dzy = r * torch.addcmul(sum_dzxc, d, sum_dz)   # sum_hw dz*y, y = (x - m_i)*r

        grad_weight = sum_dzy.sum(0).to(weight.dtype) if weight is not None else None
        grad_bias = sum_dz.sum(0).to(bias.dtype) if bias is not None else None

        # The control process on g = w*dz, the gradient at the core output y.
        one_b = 1.0 - beta
        w_hw = w / hw if w is not None else 1.0 / hw
        mean_g = sum_dz * w_hw
        v_all = varying_decay(v.double(), 1.0 - one_b * mean_y2, sum_dzy * w_hw)
        v_i = v_all[:-1]
        mean_t = torch.addcmul(mean_g, v_i, mean_y, value=-one_b)
        u_all = constant_decay(u.double(), r * mean_t, beta, 1.0)
        u.copy_(u_all[-1])
        v.copy_(v_all[-1])

        grad_x = None
        if ctx.needs_input_grad[0]:
            # grad_x = r*g - (1-b)*v*r^2*(x - m_i) - (1-b)*u, g = w*dz:
            # G's coefficient is r*w*f = scale, x's is -(1-b)*v*r^2 - k*r*w*a0, and the rest
            # (1-b)*v*r^2*m_i - (1-b)*u - k*r*w*b0.
            vr2 = (one_b * v_i) * r.square()
            q = -vr2
            c = torch.add(vr2 * m_i, u_all[:-1], alpha=-one_b)
            if k is not None:
                ka0 = k * a0
                q = q - ka0 * a0
                c = c - ka0 * b0
            grad_x = passes.combine(grad, x, scale, q, c)
        return (grad_x, grad_weight, grad_bias) + (None,) * 10
