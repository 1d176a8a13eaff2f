"""The seed scripts' batch-size rule for lr and momentum, and the line that says it applied.

The seed scripts tuned lr 0.1 and momentum 0.9 for one batch size (128 on CIFAR, 256 on
ImageNet) and rescale both for any other, so that a run at another batch size follows the
same trajectory per sample: momentum' = momentum^(B/B0) keeps the momentum average's decay
per sample, lr' = lr * (B/B0) * (1-momentum')/(1-momentum) keeps the effective step. The demo's
lr 0.1 at batch 64 trains with 0.0257 and momentum 0.949. Torch-free: the trainer, `onorm
train` and the dry runs use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainers.config import BASE_BATCH_SIZE

if TYPE_CHECKING:
    from trainers.config import TrialConfig


def rescaled_lr_momentum(lr: float, momentum: float, batch_size: int,
                         base_batch_size: int) -> tuple[float, float]:
    """lr and momentum for batch `batch_size` that match the recipe tuned at `base_batch_size`
    (identity at B = B0)."""
    if batch_size == base_batch_size:
        return lr, momentum
    ratio = batch_size / base_batch_size
    new_momentum = momentum ** ratio
    if momentum == 0:
        return lr * ratio, 0.0
    return lr * ratio * (1 - new_momentum) / (1 - momentum), new_momentum


def effective_lr_momentum(config: "TrialConfig") -> tuple[float, float]:
    """The lr and momentum the optimizer of this trial starts with."""
    return rescaled_lr_momentum(config.lr, config.momentum, config.batch_size,
                                BASE_BATCH_SIZE[config.dataset])


def rescale_note(config: "TrialConfig") -> str | None:
    """One line saying what the rescaling made of lr and momentum; None when nothing changed."""
    lr, momentum = effective_lr_momentum(config)
    if (lr, momentum) == (config.lr, config.momentum):
        return None
    base = BASE_BATCH_SIZE[config.dataset]
    return (f"batch size {config.batch_size}: effective lr {lr:.4g} (lr {config.lr:g}) and "
            f"momentum {momentum:.4g} (momentum {config.momentum:g}), rescaled from the "
            f"recipe's batch {base} as the seed scripts do")
