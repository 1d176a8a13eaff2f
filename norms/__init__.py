"""Normalization layers behind one registry: batch, group, layer, instance, online, none."""

from norms.layer_norm import LayerNorm2d
from norms.online import ActivationClamp, LayerScaling, OnlineNorm1d, OnlineNorm2d
from norms.registry import ECM_MODES, NORM_MODES, build_norm, materialize, norm_factory

__all__ = ["ECM_MODES", "NORM_MODES", "ActivationClamp", "LayerNorm2d", "LayerScaling",
           "OnlineNorm1d", "OnlineNorm2d", "build_norm", "materialize", "norm_factory"]
