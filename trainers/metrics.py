"""Running loss and top-1/top-5 accuracy over an epoch, accumulated on the training device.

Nothing here waits for the device: `update` only queues additions to a few device tensors,
so a CUDA-graph-captured step can contain it (the image count, a host number, is added by
the caller with `count`); the epoch's values are fetched at once by `summary()`. The sums
are float64, so the loss adds up exactly as a host-side float64 sum of each batch's mean
loss times its size would (and counts up to 2^53 stay exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class EpochSummary:
    """One epoch's averages per image; accuracies in percent, like the paper."""

    images: int
    loss: float
    acc1: float
    acc5: float
    nonfinite: bool      # some batch's loss was NaN or infinite


class EpochMeter:
    """Device-side sums of loss and correct predictions; averages are per image."""

    def __init__(self, device: torch.device,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """reduce: sums a tensor over the ranks of a data-parallel trial, in place."""
        self.reduce = reduce
        self.images = 0
        # [loss sum, correct top-1, correct top-k, non-finite losses], float64 so that one
        # tensor holds all four and one transfer fetches them
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)

    def count(self, images: int) -> None:
        self.images += images

    def update(self, logits: torch.Tensor, labels: torch.Tensor, mean_loss: torch.Tensor) -> None:
        """Add one batch's loss (its mean, a 0-d tensor) and hits; device work only."""
        n = labels.shape[0]
        k = min(5, logits.shape[1])  # top-5 is top-k for fewer than 5 classes
        top = logits.detach().topk(k, dim=1).indices
        hits = top.eq(labels.view(-1, 1))
        loss = mean_loss.detach().double()
        batch = torch.stack([loss * n, hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
                             (~torch.isfinite(loss)).double()])
        self.sums.add_(batch)

    def summary(self) -> EpochSummary:
        """The epoch so far, over every rank (a collective when there are several)."""
        totals = torch.cat([self.sums, self.sums.new_tensor([self.images])])
        if self.reduce is not None:
            totals = self.reduce(totals)
        loss_sum, correct1, correct5, bad, images = totals.tolist()
        images = int(images)
        if not images:
            return EpochSummary(0, math.nan, math.nan, math.nan, False)
        return EpochSummary(images, loss_sum / images, 100.0 * correct1 / images,
                            100.0 * correct5 / images, bad > 0)
