"""Normalization layers behind one registry: batch, group, layer, instance, online, none."""

from norms.registry import NORM_MODES, build_norm, materialize, norm_factory

__all__ = ["NORM_MODES", "build_norm", "materialize", "norm_factory"]
