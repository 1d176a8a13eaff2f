"""A normalizer package as a user would install it: `mypkg` with an onorm.norms entry point.

`install_plugin(root)` writes the package and its dist-info under `root`; put `root` on
sys.path (and PYTHONPATH, for processes started after) and it is installed. Holds no tests.
"""

from __future__ import annotations

from pathlib import Path

# docs/norms.md's example, with its init deliberately off (weight 3, bias 0.5): the trainer's
# init must find the layer by its class and set them to 1 and 0.
LAYERS = '''
import torch
from torch import nn


class MyNorm(nn.Module):
    """Per-sample RMS over (C, H, W), then a per-channel affine."""

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.full((num_features,), 3.0))
        self.bias = nn.Parameter(torch.full((num_features,), 0.5))
        self.eps = eps

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean((1, 2, 3), keepdim=True) + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def other_norm(num_features):
    return nn.GroupNorm(1, num_features)


def broken(num_features):
    raise RuntimeError("no layer today")


def not_a_module(num_features):
    return 5


NOT_CALLABLE = 3
'''
ENTRY_POINTS = """\
[onorm.norms]
mynorm = mypkg.layers:MyNorm
othernorm = mypkg.layers:other_norm
batch = mypkg.layers:MyNorm
"""
PATH = "mypkg.layers:MyNorm"


def install_plugin(root: Path) -> Path:
    package = root / "mypkg"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text(LAYERS)
    (package / "fails_on_import.py").write_text("raise ImportError('needs a GPU library')\n")
    info = root / "mypkg-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return root
