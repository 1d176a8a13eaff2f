"""CIFAR augmentation as batched tensor ops on the training device (pad, crop, flip, normalize).

Images stay uint8 until the last step, so the 4-pixel padding is black in pixel space (0),
which after normalization is -mean/std, as in the seed scripts' Pad(4) + RandomCrop(32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
PAD = 4


@dataclass(frozen=True)
class EpochPlan:
    """Every random choice of one epoch, drawn up front from the epoch's generator."""

    order: torch.Tensor   # (N,) int64 permutation of the training images
    dx: torch.Tensor      # (N,) int64 crop column offset into the padded image, 0..2*PAD
    dy: torch.Tensor      # (N,) int64 crop row offset, 0..2*PAD
    flip: torch.Tensor    # (N,) bool horizontal mirror

    def to(self, device: torch.device) -> "EpochPlan":
        return EpochPlan(*(t.to(device) for t in (self.order, self.dx, self.dy, self.flip)))


def draw_plan(n: int, generator: torch.Generator) -> EpochPlan:
    """Shuffle order, crop offsets and flips for `n` images from a CPU generator.

    Drawn on the CPU so that the same seed gives the same batches on any device.
    """
    order = torch.randperm(n, generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * PAD + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return EpochPlan(order, dx, dy, flip)


def crop_flip(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor,
              flip: torch.Tensor) -> torch.Tensor:
    """Zero-pad (B,C,H,W) images by PAD, cut the HxW window at (dy, dx), mirror where `flip`.

    One flat gather per batch: measured ~3x faster on CPU than 4-way advanced indexing, and
    it never loops over images.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    pw = w + 2 * PAD
    cols_ar = torch.arange(w, device=images.device)
    rows = dy[:, None] + torch.arange(h, device=images.device)                # (B, H)
    # A mirrored crop reads the same window right to left.
    cols = torch.where(flip[:, None], dx[:, None] + (w - 1) - cols_ar, dx[:, None] + cols_ar)
    pix = (rows[:, :, None] * pw + cols[:, None, :]).reshape(b, 1, h * w)
    out = padded.reshape(b, c, -1).gather(2, pix.expand(b, c, h * w))
    return out.reshape(b, c, h, w)


class Normalizer:
    """uint8 pixels -> float (x/255 - mean)/std, as one fused multiply-add on the device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device) -> None:
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * s)
        self.shift = -m / s

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)
