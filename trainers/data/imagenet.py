"""ImageNet as DIR/train and DIR/val ImageFolders: DataLoader workers read (and with the
pil decoder decode and augment) each image, the training device finishes each batch.

Reproducibility: the shuffle order comes from the epoch's generator, and each training image
draws its crop and flip from its own generator seeded by (epoch seed, image index)
(trainers/data/imagenet_items.py). So the batches of an epoch depend only on (seed, epoch),
not on the number of workers, the rank split or which worker read what, for either decoder,
and no process touches the global RNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainers.data.bundle import DataBundle, epoch_seed
from trainers.data.device_decode import decode_batch
from trainers.data.imagenet_items import (
    EncodedItems,
    EpochItems,
    PilItems,
    collate_encoded,
)
from trainers.distributed import Ranks
from trainers.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Batches each worker keeps ready ahead of the trainer (DataLoader's default is 2): uint8
# batches are small, and a deeper queue rides out slow files.
PREFETCH = 4


class _Normalize:
    """uint8 or [0, 255] float pixels -> (x / 255 - mean) / std on the device, in the order
    and float32 precision of torchvision's ToTensor + Normalize, so that the pil decoder's
    batches are bit-identical to the per-image float pipeline the workers used to run."""

    def __init__(self, device: torch.device) -> None:
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        # A tensor, not the number 255: CUDA multiplies by the reciprocal of a scalar
        # divisor, which can differ from the CPU's true division in the last bit.
        self.full = torch.full((1, 1, 1, 1), 255.0, device=device)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.device.type != "cpu":
            return pixels.float().div_(self.full).sub_(self.mean).div_(self.std)
        # On the CPU in numpy (the same IEEE float32 ops, so the same bits), one image at a
        # time: numpy never starts intra-op threads, which here would spin on the cores the
        # loader workers need (measured: the loader ran at half speed), and one image's
        # float copy stays in cache through the three passes.
        out = torch.empty(pixels.shape, dtype=torch.float32)
        full = np.float32(255)
        mean, std = self.mean[0].numpy(), self.std[0].numpy()
        for image, target in zip(pixels.numpy(), out.numpy()):
            np.divide(image, full, out=target, dtype=np.float32)
            np.subtract(target, mean, out=target)
            np.divide(target, std, out=target)
        return out


def _image_folder(root: Path, split: str):
    from torchvision.datasets import ImageFolder

    folder = root / split
    try:
        return ImageFolder(str(folder))
    except (FileNotFoundError, NotADirectoryError) as err:
        raise UserError(
            f"ImageNet data not found in {root} ({split}: {err}): expected {root}/train/<class>/"
            f"*.JPEG and {root}/val/<class>/*.JPEG image folders; run `onorm data "
            f"synth-imagenet {root}` for a synthetic one, or place the dataset there") from None


class ImageFolderData(DataBundle):
    """Train/val ImageFolders read by `workers` DataLoader processes, batches moved to device.

    The workers live as long as this object (one pool serves training and validation, one
    pass at a time) and hand over uint8 pixels (decoder pil) or file bytes (decoder gpu);
    the device finishes the batch (normalizes; with gpu also decodes, crops and resizes).
    With several ranks, each one's loader reads only its slice of every global batch and
    its shard of the validation images."""

    def __init__(self, root: str | Path, size: int, batch_size: int, seed: int | None,
                 workers: int, device: torch.device, ranks: Ranks = Ranks(),
                 decoder: str = "pil") -> None:
        # decoder gpu runs on any device here (tests run its path on the CPU); trials
        # without CUDA are refused by from_config.
        root = Path(root)
        train = _image_folder(root, "train")
        val = _image_folder(root, "val")
        if train.classes != val.classes:
            raise UserError(f"ImageNet data in {root} is malformed: train/ has "
                            f"{len(train.classes)} classes, val/ has {len(val.classes)}; "
                            "both need the same class folders")
        if len(train) < batch_size:
            raise UserError(f"batch_size {batch_size} is larger than the {len(train)} training "
                            f"images in {root}/train: lower batch_size or add images")
        self.device = torch.device(device)
        self.decoder = decoder
        items = EncodedItems if decoder == "gpu" else PilItems
        self.items = items(train, val, size)
        self.normalize = _Normalize(self.device)
        self.num_classes = len(train.classes)
        self.input_size = size
        self.batch_size = batch_size
        self.seed = seed
        self.workers = workers
        self.ranks = ranks
        self.n_train = len(train)
        self.train_len = len(train) // batch_size
        self.val_images = len(val)
        self.sampler = EpochItems()
        self._loader: DataLoader | None = None
        self._passes = 0

    @classmethod
    def from_config(cls, config, device: torch.device,
                    ranks: Ranks = Ranks()) -> "ImageFolderData":
        size = config.synthetic_image_size if config.synthetic_image_size > 0 else 224
        if config.image_decoder == "gpu" and torch.device(device).type != "cuda":
            raise UserError(f"image_decoder gpu decodes with nvJPEG on a CUDA device, but this "
                            f"trial runs on {torch.device(device).type}: use image_decoder pil "
                            "(the default), or run it where CUDA is")
        return cls(config.data_dir, size, config.batch_size, config.seed, config.workers,
                   device, ranks, config.image_decoder)

    def loader(self) -> DataLoader:
        """The one DataLoader, built on first use; its workers persist across passes."""
        if self._loader is None:
            gpu = self.decoder == "gpu"
            extra = dict(persistent_workers=True, prefetch_factor=PREFETCH) if self.workers else {}
            # Its generator only seeds worker processes (the items ignore it); passing one
            # keeps DataLoader from drawing that seed from the global RNG.
            self._loader = DataLoader(
                self.items, batch_size=self.batch_size // self.ranks.world,
                sampler=self.sampler, num_workers=self.workers,
                pin_memory=self.device.type == "cuda" and not gpu,
                collate_fn=collate_encoded if gpu else None,
                generator=torch.Generator().manual_seed(0), **extra)
        return self._loader

    def _batches(self, keys: list[tuple]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.items = keys
        self._passes += 1
        mine = self._passes
        for batch in self.loader():
            if self._passes != mine:
                # the one loader moved on to a newer pass: its batches are not ours
                raise RuntimeError("ImageFolderData serves one pass at a time: finish or drop "
                                   "a train_batches/val_batches iterator before starting another")
            if self.decoder == "gpu":
                pixels = decode_batch(batch, self.input_size, self.device)
                labels = batch["labels"]
            else:
                pixels, labels = batch
                pixels = pixels.to(self.device, non_blocking=True)
            yield self.normalize(pixels), labels.to(self.device, non_blocking=True)

    def train_keys(self, epoch: int) -> list[tuple]:
        """This rank's item keys of `epoch`, in batch order."""
        seed = epoch_seed(self.seed, epoch)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(self.n_train, generator=generator).tolist()
        b, mine = self.batch_size, self.ranks.batch_slice(self.batch_size)
        # my slice of each whole global batch (the incomplete last one is dropped)
        return [("train", seed, i) for start in range(0, self.train_len * b, b)
                for i in order[start + mine.start:start + mine.stop]]

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from self._batches(self.train_keys(epoch))

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shard = range(self.val_images)[self.ranks.shard(self.val_images)]
        yield from self._batches([("val", i) for i in shard])
