"""Datasets for the shared trainer: `build_data(config, device)` returns a DataBundle.

Submodules (and torch) are imported only when build_data is called, so that importing this
package from a CLI module or a Ray worker stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainers.data.bundle import DataBundle

if TYPE_CHECKING:
    import torch

    from trainers.config import TrialConfig
    from trainers.distributed import Ranks

__all__ = ["DataBundle", "build_data"]


def build_data(config: "TrialConfig", device: "torch.device", ranks: "Ranks | None" = None
               ) -> DataBundle:
    """The train/val batches of `config.dataset` read from `config.data_dir`, on `device`;
    with `ranks`, this rank's part of them (trainers/distributed.py)."""
    from trainers.distributed import Ranks

    ranks = ranks or Ranks()
    if config.dataset in ("cifar10", "cifar100"):
        from trainers.data.cifar import CifarData
        return CifarData.from_config(config, device, ranks)
    if config.dataset == "imagenet":
        from trainers.data.imagenet import ImageFolderData
        return ImageFolderData.from_config(config, device, ranks)
    # TrialConfig validation makes this unreachable; kept for configs built by hand.
    from trainers.errors import UserError
    raise UserError(f"dataset {config.dataset!r}: choose one of cifar10, cifar100, imagenet")
