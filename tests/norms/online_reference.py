"""A float64 sample-by-sample Online Normalization, written straight from docs/norms.md's equations.

Deliberately naive (a Python loop per sample) so that it can be checked by eye against the
brief; the fast closed-form layers are tested against it.
"""

from __future__ import annotations

import torch


class ReferenceOnlineNorm:
    """State (m, var, u, v) per channel, float64 during a batch, float32 between batches."""

    def __init__(self, channels: int, alpha_fwd: float, alpha_bkw: float, eps: float = 1e-5,
                 weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 ecm: str = "ls", ls_eps: float = 1e-5, clamp_val: float = 5.0):
        self.a, self.b, self.eps = alpha_fwd, alpha_bkw, eps
        self.m = torch.zeros(channels, dtype=torch.float64)
        self.var = torch.ones(channels, dtype=torch.float64)
        self.u = torch.zeros(channels, dtype=torch.float64)
        self.v = torch.zeros(channels, dtype=torch.float64)
        self.weight = None if weight is None else weight.detach().double().requires_grad_()
        self.bias = None if bias is None else bias.detach().double().requires_grad_()
        self.ecm, self.ls_eps, self.clamp_val = ecm, ls_eps, clamp_val
        self.min_v_coef = float("inf")  # smallest 1 - (1-b)*E[y_i^2] seen in a backward

    @staticmethod
    def _as_f32(t: torch.Tensor) -> torch.Tensor:
        # The layer keeps its buffers in float32 between batches.
        return t.float().double()

    def _core_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        a, ys, variances = self.a, [], []
        for xi in x:                                   # xi: (C, H, W)
            mu = xi.mean((1, 2))
            s2 = xi.var((1, 2), unbiased=False) if xi[0].numel() > 1 else torch.zeros_like(mu)
            ys.append((xi - self.m[:, None, None]) / (self.var[:, None, None] + self.eps).sqrt())
            variances.append(self.var.clone())
            d = mu - self.m
            self.var = a * self.var + (1 - a) * s2 + a * (1 - a) * d ** 2
            self.m = self.m + (1 - a) * d
        self.m, self.var = self._as_f32(self.m), self._as_f32(self.var)
        return torch.stack(ys), variances

    def _core_backward(self, g: torch.Tensor, y: torch.Tensor,
                       variances: list[torch.Tensor]) -> torch.Tensor:
        b, grads = self.b, []
        for gi, yi, var_i in zip(g, y, variances):
            self.min_v_coef = min(self.min_v_coef,
                                  float((1 - (1 - b) * (yi ** 2).mean((1, 2))).min()))
            t = gi - (1 - b) * self.v[:, None, None] * yi
            self.v = self.v + (t * yi).mean((1, 2))
            gx = t / (var_i[:, None, None] + self.eps).sqrt() - (1 - b) * self.u[:, None, None]
            self.u = self.u + gx.mean((1, 2))
            grads.append(gx)
        self.u, self.v = self._as_f32(self.u), self._as_f32(self.v)
        return torch.stack(grads)

    def _head(self, y: torch.Tensor) -> torch.Tensor:
        """Affine then error compensation, by plain autograd."""
        z = y
        if self.weight is not None:
            z = y * self.weight[:, None, None] + self.bias[:, None, None]
        if self.ecm == "ls":
            return z / ((z ** 2).mean((1, 2, 3), keepdim=True) + self.ls_eps).sqrt()
        if self.ecm == "ac":
            return z.clamp(-self.clamp_val, self.clamp_val)
        return z

    def train_step(self, x: torch.Tensor, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training forward and backward on (N, C, H, W) float64; returns out and grads."""
        y, variances = self._core_forward(x.double())
        y = y.requires_grad_()
        out = self._head(y)
        params = [p for p in (self.weight, self.bias) if p is not None]
        grads = torch.autograd.grad(out, [y] + params, grad_out.double())
        grad_x = self._core_backward(grads[0], y.detach(), variances)
        result = {"out": out.detach(), "grad_x": grad_x}
        if params:
            result["grad_weight"], result["grad_bias"] = grads[1], grads[2]
        return result

    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x.double() - self.m[:, None, None]) / (self.var[:, None, None] + self.eps).sqrt()
        with torch.no_grad():
            return self._head(y)

    def buffers(self) -> dict[str, torch.Tensor]:
        return {"m": self.m, "var": self.var, "u": self.u, "v": self.v}
