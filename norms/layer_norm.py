"""Layer normalization over (C, H, W) per sample, with a per-element affine of that shape.

The affine's shape depends on the spatial size, known only from the first input, so its
parameters are lazy; `norms.materialize` creates them before the optimizer is built (the
paper's code created them after, so they were never trained).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter


class LayerNorm2d(LazyModuleMixin, nn.Module):
    """Normalize each sample over (C, H, W); weight 1 and bias 0 of shape (C, H, W)."""

    cls_to_become = None  # stays a LayerNorm2d once materialized

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = UninitializedParameter()
        self.bias = UninitializedParameter()

    def initialize_parameters(self, x: torch.Tensor) -> None:  # called by LazyModuleMixin
        self._check_input(x)
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.weight.materialize(tuple(x.shape[1:]))
                self.bias.materialize(tuple(x.shape[1:]))
                self.weight.fill_(1)
                self.bias.zero_()

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"LayerNorm2d({self.num_features}) expects an (N, "
                             f"{self.num_features}, H, W) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if tuple(self.weight.shape) != tuple(x.shape[1:]):
            raise ValueError(f"LayerNorm2d was materialized for inputs of shape (N, "
                             f"{', '.join(map(str, self.weight.shape))}), got "
                             f"{tuple(x.shape)}")
        return F.layer_norm(x, tuple(x.shape[1:]), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
