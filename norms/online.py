"""Online Normalization layers (Chiley et al. 2019) and their error-compensation modules.

Each layer is: normalization core -> per-channel affine -> error compensation ('ls' layer
scaling, 'ac' activation clamping or 'none'). Training runs a fused op: the eager closed form
in norms.online_function or the Triton kernels of norms.online_triton, as `impl` and the
input's device decide (norms.impl); evaluation uses the plain modules below and changes no
state.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from norms.impl import check_impl, training_function
from norms.online_inputs import OnlineNormConstants, OnlineNormState
from norms.sample_chain import SampleChain, chain_over


class LayerScaling(nn.Module):
    """Divide each sample by the root mean square of all its non-batch elements."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, x.dim()))
        # The statistic in at least float32: half precision squares overflow above 256.
        mean_sq = x.float().square().mean(dims, keepdim=True) if x.dtype != torch.float64 \
            else x.square().mean(dims, keepdim=True)
        return x * (mean_sq + self.eps).rsqrt().to(x.dtype)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class ActivationClamp(nn.Module):
    """Clamp activations to [-clamp_val, clamp_val]."""

    def __init__(self, clamp_val: float = 5):
        super().__init__()
        self.clamp_val = clamp_val

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-self.clamp_val, self.clamp_val)

    def extra_repr(self) -> str:
        return f"clamp_val={self.clamp_val}"


class _Constant:
    """A layer attribute that is one field of the layer's OnlineNormConstants: read from
    them, and set by replacing them (so a new value is checked too)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, layer: _OnlineNorm | None, owner: type | None = None) -> object:
        if layer is None:
            return self
        return getattr(layer.constants, self.name)

    def __set__(self, layer: _OnlineNorm, value: object) -> None:
        layer.constants = dataclasses.replace(layer.constants, **{self.name: value})
        # the evaluation path's compensation follows (ecm, ls_eps, clamp_val), as training's
        layer.compensation = compensation(layer.constants)


def compensation(constants: OnlineNormConstants) -> nn.Module:
    """The error-compensation module of the evaluation path."""
    if constants.ecm == "ls":
        return LayerScaling(constants.ls_eps)
    if constants.ecm == "ac":
        return ActivationClamp(constants.clamp_val)
    return nn.Identity()


class _OnlineNorm(nn.Module):
    """Shared parameters, state and evaluation path of OnlineNorm1d/2d.

    impl: 'auto' (Triton kernels for CUDA inputs, eager ops otherwise), 'eager' or 'triton'
    (CUDA inputs, or CPU inputs under Triton's interpreter); a plain attribute, so it can be
    changed on a built layer and is not part of the state_dict.

    constants: alpha_fwd, alpha_bkw, eps, ecm, ls_eps and clamp_val as one frozen
    OnlineNormConstants (norms.online_inputs), checked once here and handed to the training
    ops as they are; the attributes of those names read them (and a new value replaces
    them, checked again). Like `impl`, they are not part of the state_dict.
    """

    # The default for layers pickled before `impl` existed.
    impl = "auto"
    # Attributes as before the constants were one object, read from and written to them.
    alpha_fwd = _Constant()
    alpha_bkw = _Constant()
    eps = _Constant()
    ecm = _Constant()
    ls_eps = _Constant()
    clamp_val = _Constant()

    def __init__(self, num_features: int, alpha_fwd: float = 0.999, alpha_bkw: float = 0.99,
                 eps: float = 1e-5, affine: bool = True, ecm: str = "ls",
                 ls_eps: float = 1e-5, clamp_val: float = 5, impl: str = "auto"):
        super().__init__()
        self.constants = OnlineNormConstants(alpha_fwd, alpha_bkw, eps, ecm, ls_eps, clamp_val)
        self.impl = check_impl(impl)
        self.num_features = num_features
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        # Forward statistics (mean, variance) and backward control state (u, v), per channel.
        self.register_buffer("m", torch.zeros(num_features))
        self.register_buffer("var", torch.ones(num_features))
        self.register_buffer("u", torch.zeros(num_features))
        self.register_buffer("v", torch.zeros(num_features))
        self.compensation = compensation(self.constants)

    # Set by synchronize: one chain over the global batch of a process group.
    synchronized = False
    process_group: object = None

    def synchronize(self, process_group: object = None) -> None:
        """Run the recurrences over every rank's samples, in place (the hook that
        norms.convert_sync_norms calls; norms.sample_chain)."""
        self.synchronized, self.process_group = True, process_group

    def __setstate__(self, state: dict) -> None:
        # A layer pickled before the constants were one object holds them one by one.
        if "constants" not in state:
            fields = [f.name for f in dataclasses.fields(OnlineNormConstants)]
            state["constants"] = OnlineNormConstants(*(state.pop(name) for name in fields))
        super().__setstate__(state)

    def reset_running_stats(self) -> None:
        self.m.zero_()
        self.var.fill_(1)
        self.u.zero_()
        self.v.zero_()

    def _check_input(self, x: torch.Tensor, dims: int) -> None:
        if x.dim() != dims or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects a "
                             f"{dims}-d input with {self.num_features} channels, got shape "
                             f"{tuple(x.shape)}")

    def _chain(self) -> SampleChain | None:
        return chain_over(self.process_group) if self.synchronized else None

    def _forward4d(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            function = training_function(self.impl, x.device)
            state = OnlineNormState(self.m, self.var, self.u, self.v)
            # both ops run the chain over ranks, if any
            return function.apply(x, self.weight, self.bias, state, self.constants,
                                  self._chain())
        scale = (self.var.double() + self.eps).rsqrt()
        shift = -self.m.double() * scale
        y = torch.addcmul(shift.to(x.dtype)[:, None, None], x, scale.to(x.dtype)[:, None, None])
        if self.weight is not None:
            y = torch.addcmul(self.bias.to(x.dtype)[:, None, None], y,
                              self.weight.to(x.dtype)[:, None, None])
        return self.compensation(y)

    def extra_repr(self) -> str:
        impl = "" if self.impl == "auto" else f", impl={self.impl!r}"
        return (f"{self.num_features}, alpha_fwd={self.alpha_fwd}, alpha_bkw={self.alpha_bkw}, "
                f"eps={self.eps}, affine={self.affine}, ecm={self.ecm!r}{impl}")


class OnlineNorm2d(_OnlineNorm):
    """Online Normalization for (N, C, H, W) inputs; statistics per channel over H, W."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, 4)
        return self._forward4d(x)


class OnlineNorm1d(_OnlineNorm):
    """Online Normalization for (N, C) inputs: each sample is its own mean, variance 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, 2)
        return self._forward4d(x[:, :, None, None]).flatten(1)


def check_options(**options: object) -> None:
    """Refuse a bad layer option (ecm, alpha_fwd, impl, ...) before any layer is built
    (norms.registry's factories check up front): the layer's own checks, on one channel."""
    OnlineNorm2d(1, **options)
