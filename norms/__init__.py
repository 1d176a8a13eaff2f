"""Normalization layers behind one registry: batch, group, layer, instance, online, none.

The layers are imported on first use (PEP 562), so `norms.modes` can be read without torch.
"""

import importlib
from typing import Any

from norms.modes import ECM_MODES, NORM_MODES

_LAZY = {
    "ActivationClamp": "norms.online", "LayerScaling": "norms.online",
    "OnlineNorm1d": "norms.online", "OnlineNorm2d": "norms.online",
    "LayerNorm2d": "norms.layer_norm",
    "build_norm": "norms.registry", "materialize": "norms.registry",
    "norm_factory": "norms.registry", "norm_layer_classes": "norms.registry",
    "convert_sync_norms": "norms.sync", "SyncBatchNorm2d": "norms.sync",
}

__all__ = ["ECM_MODES", "NORM_MODES", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'norms' has no attribute {name!r}")
