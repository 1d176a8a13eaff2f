"""Running loss and top-1/top-5 accuracy over an epoch (accuracies in percent, like the paper)."""

from __future__ import annotations

import math

import torch


class EpochMeter:
    """Sums of loss and correct predictions; averages are per image."""

    def __init__(self) -> None:
        self.images = 0
        self.loss_sum = 0.0
        self.correct1 = 0
        self.correct5 = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor, mean_loss: float) -> None:
        n = labels.shape[0]
        k = min(5, logits.shape[1])  # top-5 is top-k for fewer than 5 classes
        top = logits.detach().topk(k, dim=1).indices
        hits = top.eq(labels.view(-1, 1))
        self.correct1 += int(hits[:, 0].sum())
        self.correct5 += int(hits.any(dim=1).sum())
        self.loss_sum += mean_loss * n
        self.images += n

    @property
    def loss(self) -> float:
        return self.loss_sum / self.images if self.images else math.nan

    @property
    def acc1(self) -> float:
        return 100.0 * self.correct1 / self.images if self.images else math.nan

    @property
    def acc5(self) -> float:
        return 100.0 * self.correct5 / self.images if self.images else math.nan
