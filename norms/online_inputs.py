"""What Online Norm's training ops take besides the tensors they differentiate: the layer's
constants, as one frozen object validated once, and its state buffers, as one tuple.

Both ops (norms.online_function, norms.online_triton) take `(x, weight, bias, state,
constants, chain)`; the layer (norms.online) builds its constants when it is built.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple

from norms.modes import ECM_MODES

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass(frozen=True)
class OnlineNormConstants:
    """A layer's decay factors, epsilons and error compensation, checked and made floats.

    Frozen and hashable: the Triton path keeps one device tensor of them per value."""

    alpha_fwd: float   # the forward statistics' decay (the paper's alpha_f)
    alpha_bkw: float   # the backward control state's decay (alpha_b)
    eps: float         # added to the variance before the square root
    ecm: str           # error compensation: 'ls' layer scaling, 'ac' activation clamp, 'none'
    ls_eps: float      # added to layer scaling's mean square
    clamp_val: float   # activation clamping's bound

    def __post_init__(self) -> None:
        if self.ecm not in ECM_MODES:
            raise ValueError(f"unknown ecm {self.ecm!r}: choose one of {', '.join(ECM_MODES)}")
        for name in ("alpha_fwd", "alpha_bkw"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        for name in ("alpha_fwd", "alpha_bkw", "eps", "ls_eps", "clamp_val"):
            object.__setattr__(self, name, float(getattr(self, name)))


class OnlineNormState(NamedTuple):
    """A layer's state buffers, which the training ops update in place: the forward
    statistics (mean, variance) and the backward control state (u, v), per channel."""

    m: torch.Tensor
    var: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
