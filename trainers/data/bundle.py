"""The interface every dataset offers the trainer, and the per-epoch seeding rule."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from torch import Tensor

# Seed used when a trial sets none: runs stay reproducible, epochs still differ.
DEFAULT_SEED = 0


def epoch_seed(seed: int | None, epoch: int) -> int:
    """One 63-bit seed per (trial seed, epoch): a resumed epoch redraws the same batches."""
    base = DEFAULT_SEED if seed is None else seed
    # A large odd multiplier keeps (seed, epoch) pairs from colliding for any practical range.
    return (base * 1_000_003 + epoch) % (2**63 - 1)


class DataBundle(ABC):
    """Training and validation batches of one dataset, already on the training device.

    Attributes: num_classes, input_size (image side in pixels), train_len (training batches
    per epoch; the last incomplete batch is dropped), val_images (validation image count).
    """

    num_classes: int
    input_size: int
    train_len: int
    val_images: int

    @abstractmethod
    def train_batches(self, epoch: int) -> Iterable[tuple["Tensor", "Tensor"]]:
        """Augmented, normalized (images, int64 labels); a pure function of (seed, epoch)."""

    @abstractmethod
    def val_batches(self) -> Iterable[tuple["Tensor", "Tensor"]]:
        """Every validation image once, in file order, without augmentation."""
