"""Group normalization, and instance normalization as group norm with one channel per group.

Both are torch's GroupNorm; these builders give them the registry's signature (channels
first, then the layer options of their rows in norms.modes).
"""

from __future__ import annotations

from torch import nn


def group_norm(num_features: int, gn_num_groups: int = 32) -> nn.GroupNorm:
    """Statistics per sample over each group of channels (and H, W)."""
    groups = int(gn_num_groups)
    if groups < 1 or num_features % groups:
        raise ValueError(f"group norm: {num_features} channels are not divisible into "
                         f"gn_num_groups={groups} groups; choose a divisor of {num_features}")
    return nn.GroupNorm(groups, num_features)


def instance_norm(num_features: int) -> nn.GroupNorm:
    """Statistics per sample and channel over H, W, with a per-channel affine."""
    return nn.GroupNorm(num_features, num_features)
