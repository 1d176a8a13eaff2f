"""CIFAR-10/100 held as uint8 tensors on the training device, augmented there in batches."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Iterator

import torch

from trainers.data.augment import CIFAR_MEAN, CIFAR_STD, Normalizer, crop_flip, draw_plan
from trainers.data.bundle import DataBundle, epoch_seed
from trainers.data.cifar_format import LAYOUTS, CifarLayout, missing_message, read_split
from trainers.distributed import Ranks
from trainers.errors import UserError

# Batches augmented per tensor op: 16x fewer kernel launches and thread-pool wake-ups than
# one batch at a time (3-4x faster on a busy 2-core CPU), ~25 MB of floats at batch 128.
CHUNK_BATCHES = 16


def _download(root: Path, layout: CifarLayout) -> None:
    """Fetch the real dataset with torchvision; only tried when its folder does not exist.

    Only into a folder that exists or whose parent does (a typo in a deeper path is refused,
    not downloaded into), saying where; a failed download leaves nothing behind.
    """
    import torchvision.datasets as tvd

    root = Path(root).absolute()
    if not root.is_dir() and not root.parent.is_dir():
        raise UserError(f"{layout.title} data folder {root} does not exist, nor does its "
                        f"parent {root.parent}: check the path (a download goes only into a "
                        "folder that exists or whose parent exists)")
    created = not root.exists()
    before = set() if created else {p.name for p in root.iterdir()}
    print(f"downloading {layout.title} (about 170 MB) into {root}", file=sys.stderr,
          flush=True)
    cls = tvd.CIFAR10 if layout.dataset == "cifar10" else tvd.CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except BaseException as err:
        _remove_download(root, created, before)
        if not isinstance(err, Exception):   # Ctrl-C: cleaned up, still an interrupt
            raise
        # no network, DNS, disk full, bad archive: all mean "not there"
        reason = f"not found and download failed ({type(err).__name__}: {err})"
        raise UserError(missing_message(root, layout, reason)) from None


def _remove_download(root: Path, created: bool, before: set[str]) -> None:
    """Undo a failed download: the folder if it made it, else only what it added."""
    if created:
        shutil.rmtree(root, ignore_errors=True)
        return
    for path in root.iterdir():
        if path.name not in before:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def load_cifar(root: str | Path, dataset: str) -> tuple[tuple, tuple]:
    """((train images, labels), (test images, labels)) as numpy, downloading when absent."""
    root = Path(root)
    layout = LAYOUTS[dataset]
    if not (root / layout.folder).is_dir():
        _download(root, layout)
    if not (root / layout.folder / layout.meta_file).is_file():
        raise UserError(missing_message(root, layout, f"incomplete ({layout.meta_file} missing)"))
    return read_split(root, layout, train=True), read_split(root, layout, train=False)


class CifarData(DataBundle):
    """Whole splits live on `device` as uint8; each batch is gathered, cropped and normalized
    there, so the host does no per-image work. With several ranks each one augments only its
    slice of every global batch, and validates its shard of the test split."""

    input_size = 32

    def __init__(self, train: tuple, val: tuple, num_classes: int, batch_size: int,
                 seed: int | None, device: torch.device, ranks: Ranks = Ranks()) -> None:
        self.device = torch.device(device)
        self.train_x = torch.from_numpy(train[0]).to(self.device)
        self.train_y = torch.from_numpy(train[1]).to(self.device)
        self.val_x = torch.from_numpy(val[0]).to(self.device)
        self.val_y = torch.from_numpy(val[1]).to(self.device)
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.seed = seed
        self.ranks = ranks
        self.train_len = self.train_x.shape[0] // batch_size
        self.val_images = self.val_x.shape[0]
        self.val_shard = ranks.shard(self.val_images)
        self.normalize = Normalizer(CIFAR_MEAN, CIFAR_STD, self.device)

    @classmethod
    def from_config(cls, config, device: torch.device, ranks: Ranks = Ranks()) -> "CifarData":
        train, val = load_cifar(config.data_dir, config.dataset)
        n = train[0].shape[0]
        if n < config.batch_size:
            raise UserError(f"batch_size {config.batch_size} is larger than the {n} training "
                            f"images in {config.data_dir}: lower batch_size or add images")
        return cls(train, val, LAYOUTS[config.dataset].num_classes, config.batch_size,
                   config.seed, device, ranks)

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        plan = draw_plan(self.train_x.shape[0], generator).to(self.device)
        b = self.batch_size
        mine = self.ranks.batch_slice(b)   # every rank draws the whole plan, uses its part
        offsets = torch.arange(mine.start, mine.stop, device=self.device)
        local = mine.stop - mine.start
        used = self.train_len * b
        for start in range(0, used, b * CHUNK_BATCHES):
            firsts = torch.arange(start, min(start + b * CHUNK_BATCHES, used), b,
                                  device=self.device)
            s = (firsts[:, None] + offsets[None, :]).flatten()   # plan positions of my images
            idx = plan.order[s]
            images = crop_flip(self.train_x[idx], plan.dx[s], plan.dy[s], plan.flip[s])
            yield from zip(self.normalize(images).split(local), self.train_y[idx].split(local))

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        b = self.batch_size
        shard = self.val_shard
        for start in range(shard.start, shard.stop, b * CHUNK_BATCHES):
            s = slice(start, min(start + b * CHUNK_BATCHES, shard.stop))
            yield from zip(self.normalize(self.val_x[s]).split(b), self.val_y[s].split(b))
