"""The only place that knows the normalizer kinds: mode name -> layer taking channels first.

(Provisional version: the online/layer entries are completed by the norms work.)
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

NORM_MODES = ("batch", "group", "layer", "instance", "online", "none")


def build_norm(mode: str, num_features: int, **options: Any) -> nn.Module:
    """Build one normalization layer for `num_features` channels.

    options (each used only by the modes it concerns, ignored by the others):
    alpha_fwd, alpha_bkw, ecm, eps, ls_eps, clamp_val (online); gn_num_groups (group).
    """
    if mode == "batch":
        return nn.BatchNorm2d(num_features)
    if mode == "group":
        return nn.GroupNorm(options.get("gn_num_groups", 32), num_features)
    if mode == "instance":
        return nn.GroupNorm(num_features, num_features)
    if mode == "none":
        return nn.Identity()
    if mode == "layer":
        from norms.layer_norm import LayerNorm2d
        return LayerNorm2d(num_features)
    if mode == "online":
        from norms.online import OnlineNorm2d
        keys = ("alpha_fwd", "alpha_bkw", "eps", "ecm", "ls_eps", "clamp_val")
        return OnlineNorm2d(num_features, **{k: options[k] for k in keys if k in options})
    raise ValueError(f"unknown norm mode {mode!r}: choose one of {', '.join(NORM_MODES)}")


def norm_factory(mode: str, **options: Any) -> Callable[[int], nn.Module]:
    """A callable `channels -> layer`, what the models take as `norm_layer`."""
    if mode not in NORM_MODES:
        raise ValueError(f"unknown norm mode {mode!r}: choose one of {', '.join(NORM_MODES)}")
    return lambda num_features: build_norm(mode, num_features, **options)


def materialize(model: nn.Module, example_input: torch.Tensor) -> None:
    """Create parameters whose shape depends on the input (layer norm's per-element affine).

    Runs one eval-mode forward pass so that no running statistic changes; call it before the
    optimizer is built so those parameters are trained.
    """
    from torch.nn.parameter import UninitializedParameter
    if not any(isinstance(p, UninitializedParameter) for p in model.parameters()):
        return
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(example_input)
    model.train(was_training)
