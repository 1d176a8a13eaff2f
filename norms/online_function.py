"""The fused training-mode Online Normalization op: core, affine and error compensation.

Forward: one reduction pass over x for per-(sample, channel) sums, the recurrences over the
batch in float64 on (N, C) tensors, then one elementwise pass out = x*A[n,c] + B[n,c] that
folds normalization, affine and layer scaling (whose per-sample factor follows analytically
from the (n, c) statistics). Backward: the control process of the paper (not the autograd
gradient of the forward), done the same way: one reduction pass over (grad, x), float64
(N, C) math, one elementwise pass grad_x = g*P + x*Q + R.

The Function never sees the module: the state buffers come in as tensors and are updated in
place, so deep copies, pickling and DDP replicas each keep their own state.
"""

from __future__ import annotations

from typing import Any

import torch

from norms.recurrences import constant_decay, varying_decay

ECM_MODES = ("ls", "ac", "none")

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Below this ratio of variance to mean square, E[x^2] - E[x]^2 from float32 sums loses
# too many digits; those batches get a second, centred pass instead.
_CANCELLATION_RATIO = 1e-3


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _spatial_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) mean and biased variance of x over H, W, as float64 (N, C)."""
    hw = x.shape[2] * x.shape[3]
    acc = _acc_dtype(x.dtype)
    mean = x.sum((2, 3), dtype=acc).double() / hw
    if hw == 1:
        return mean, torch.zeros_like(mean)
    mean_sq = torch.linalg.vector_norm(x, 2, (2, 3), dtype=acc).double().square() / hw
    var = (mean_sq - mean.square()).clamp_min(0)
    if x.dtype != torch.float64 and bool((var < _CANCELLATION_RATIO * mean_sq).any()):
        centred = x - mean.to(x.dtype)[:, :, None, None]
        shift = centred.sum((2, 3), dtype=acc).double() / hw
        var = (torch.linalg.vector_norm(centred, 2, (2, 3), dtype=acc).double().square() / hw
               - shift.square()).clamp_min(0)
        mean = mean + shift
    return mean, var


def _affine(weight: torch.Tensor | None, bias: torch.Tensor | None,
            like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = weight.detach().double() if weight is not None else torch.ones_like(like[0])
    b = bias.detach().double() if bias is not None else torch.zeros_like(like[0])
    return w, b


def _as4d(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype)[:, :, None, None]


class OnlineNormFunction(torch.autograd.Function):
    """Training-mode Online Normalization on an (N, C, H, W) input; updates m, var, u, v."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, m: torch.Tensor, var: torch.Tensor,
                u: torch.Tensor, v: torch.Tensor, alpha_fwd: float, alpha_bkw: float,
                eps: float, ecm: str, ls_eps: float, clamp_val: float) -> torch.Tensor:
        a = alpha_fwd
        mu, s2 = _spatial_stats(x)
        # Mean and variance states seen by each sample (rows 0..N-1) and after the batch (N).
        m_all = constant_decay(m.double(), mu, a, 1.0 - a)
        m_i = m_all[:-1]
        d = mu - m_i
        # (1-a)*s2 + a*(1-a)*d^2 = (1-a)*(s2 + a*d^2)
        var_all = constant_decay(var.double(), s2 + a * d.square(), a, 1.0 - a)
        r = (var_all[:-1] + eps).rsqrt()
        m.copy_(m_all[-1])
        var.copy_(var_all[-1])

        w, b = _affine(weight, bias, mu)
        a0 = w * r                      # z = a0*x + b0 = w*y + b
        b0 = b - a0 * m_i
        if ecm == "ls":
            # E_hw[z^2] = Var(z) + E[z]^2, from the (n, c) statistics alone.
            mean_z2 = a0.square() * s2 + (a0 * d + b).square()
            f = (mean_z2.mean(1, keepdim=True) + ls_eps).rsqrt()
            scale, shift = a0 * f, b0 * f
        else:
            f = None
            scale, shift = a0, b0
        out = torch.empty_like(x)
        torch.addcmul(_as4d(shift, x.dtype), x, _as4d(scale, x.dtype), out=out)
        if ecm == "ac":
            out.clamp_(-clamp_val, clamp_val)

        ctx.save_for_backward(x, weight, bias)
        ctx.small = (mu, s2, m_i, r, w, a0, b0, f)
        ctx.state = (u, v)
        ctx.config = (alpha_bkw, ecm, clamp_val)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        mu, s2, m_i, r, w, a0, b0, f = ctx.small
        u, v = ctx.state
        beta, ecm, clamp_val = ctx.config
        hw = x.shape[2] * x.shape[3]
        acc = _acc_dtype(x.dtype)

        grad = grad_out
        if ecm == "ac":
            z = torch.addcmul(_as4d(b0, x.dtype), x, _as4d(a0, x.dtype))
            grad = grad_out * ((z >= -clamp_val) & (z <= clamp_val))
            del z
        if x.dtype in _LOW_PRECISION:
            sum_g = grad.sum((2, 3), dtype=acc).double()
            sum_gx = (grad.float() * x.float()).sum((2, 3)).double()
        else:
            sum_g = grad.sum((2, 3), dtype=acc).double()
            sum_gx = (grad * x).sum((2, 3), dtype=acc).double()
        # Centred at the sample mean: sum g*(x - mu), less cancellation than sum g*x.
        sum_gxc = sum_gx - mu * sum_g

        # dL/dz = alpha*grad + beta_*x + gamma per (n, c); z is the affine output.
        if ecm == "ls":
            # out = z*f: dL/dz = f*G - f^3/M * sum(G*z) * z, M = C*H*W.
            sum_gz = (a0 * sum_gx + b0 * sum_g).sum(1, keepdim=True)
            k = f.pow(3) * sum_gz / (x.shape[1] * hw)
            alpha, beta_, gamma = f, -k * a0, -k * b0
            sum_dz = alpha * sum_g + (beta_ * mu + gamma) * hw
            # sum dz*(x - mu): the x term contributes beta_*hw*s2, the constant nothing.
            sum_dzxc = alpha * sum_gxc + beta_ * hw * s2
        else:
            alpha = torch.ones_like(f if f is not None else mu[:, :1])
            beta_ = gamma = None
            sum_dz, sum_dzxc = sum_g, sum_gxc
        d = mu - m_i
        sum_dzy = r * (sum_dzxc + d * sum_dz)   # sum_hw dz*y, y = (x - m_i)*r

        grad_weight = sum_dzy.sum(0).to(weight.dtype) if weight is not None else None
        grad_bias = sum_dz.sum(0).to(bias.dtype) if bias is not None else None

        # The control process on g = w*dz (dL/dy of the core output).
        one_b = 1.0 - beta
        mean_g = w * sum_dz / hw
        mean_gy = w * sum_dzy / hw
        mean_y = r * d
        mean_y2 = r.square() * (s2 + d.square())
        v_all = varying_decay(v.double(), 1.0 - one_b * mean_y2, mean_gy)
        v_i = v_all[:-1]
        mean_t = mean_g - one_b * v_i * mean_y
        u_all = constant_decay(u.double(), r * mean_t, beta, 1.0)
        u_i = u_all[:-1]
        u.copy_(u_all[-1])
        v.copy_(v_all[-1])

        grad_x = None
        if ctx.needs_input_grad[0]:
            # grad_x = r*g - (1-b)*v*r^2*(x - m_i) - (1-b)*u, g = w*(alpha*G + beta_*x + gamma)
            vr2 = one_b * v_i * r.square()
            p = r * w * alpha
            q = -vr2
            c = vr2 * m_i - one_b * u_i
            if beta_ is not None:
                q = q + r * w * beta_
                c = c + r * w * gamma
            grad_x = torch.empty_like(x)
            torch.addcmul(_as4d(c, x.dtype), grad, _as4d(p.expand_as(c), x.dtype), out=grad_x)
            grad_x.addcmul_(x, _as4d(q, x.dtype))
        return (grad_x, grad_weight, grad_bias) + (None,) * 10
