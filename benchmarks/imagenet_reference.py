"""A frozen copy of the ImageNet loader as it was before issue 21 ("today's loader"): the
baseline that benchmarks/data_speed.py --imagenet times and that the tests compare the pil
decoder's batches with, bit for bit.

Per image a worker decodes with PIL, crops and resizes on the PIL image, then converts to
float32 and normalizes (ToTensor, Normalize); a new DataLoader, with new worker processes,
is built for every epoch. Do not "improve" this file: its pixels are the reference.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from trainers.data.bundle import epoch_seed
from trainers.distributed import Ranks

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def random_resized_box(width: int, height: int,
                       generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop of 8-100% area and aspect in [3/4, 4/3].

    Ten tries at a random area and log-uniform aspect; when none fits, the largest central
    crop whose aspect is within range.
    """
    area = width * height
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target = area * (CROP_SCALE[0] + u[0] * (CROP_SCALE[1] - CROP_SCALE[0]))
        aspect = math.exp(log_lo + u[1] * (log_hi - log_lo))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    aspect = width / height
    if aspect < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif aspect > CROP_RATIO[1]:
        h, w = height, round(height * CROP_RATIO[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _to_normalized_tensor():
    from torchvision import transforms as T
    return T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


class _TrainView(Dataset):
    """ImageFolder samples with a per-image seeded RandomResizedCrop + horizontal flip."""

    def __init__(self, folder, size: int) -> None:
        self.folder = folder
        self.size = size
        self.epoch_seed = 0
        self.post = _to_normalized_tensor()

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import torchvision.transforms.functional as TF

        path, label = self.folder.samples[index]
        image = self.folder.loader(path)
        generator = torch.Generator().manual_seed(
            (self.epoch_seed * 2_654_435_761 + index) % (2**63 - 1))
        top, left, h, w = random_resized_box(image.width, image.height, generator)
        image = TF.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
        if torch.rand(1, generator=generator).item() < 0.5:
            image = TF.hflip(image)
        return self.post(image), label


class ReferenceImageNet:
    """train_batches / val_batches exactly as trainers/data/imagenet.py computed them."""

    def __init__(self, root: str | Path, size: int, batch_size: int, seed: int | None,
                 workers: int, device: torch.device, ranks: Ranks | None = None) -> None:
        from torchvision import transforms as T
        from torchvision.datasets import ImageFolder

        root = Path(root)
        train = ImageFolder(str(root / "train"))
        self.val_set = ImageFolder(str(root / "val"), transform=T.Compose([
            T.Resize(size * 8 // 7), T.CenterCrop(size), _to_normalized_tensor()]))
        self.device = torch.device(device)
        self.train_view = _TrainView(train, size)
        self.batch_size, self.seed, self.workers = batch_size, seed, workers
        self.ranks = ranks or Ranks()
        self.train_len = len(train) // batch_size
        self.val_images = len(self.val_set)

    def _loader(self, dataset, order, generator, drop_last: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size // self.ranks.world, sampler=order,
                          num_workers=self.workers, pin_memory=self.device.type == "cuda",
                          drop_last=drop_last, generator=generator)

    def _to_device(self, loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in loader:
            yield (images.to(self.device, non_blocking=True),
                   labels.to(self.device, non_blocking=True))

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed = epoch_seed(self.seed, epoch)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.train_view), generator=generator).tolist()
        b, mine = self.batch_size, self.ranks.batch_slice(self.batch_size)
        order = [i for start in range(0, self.train_len * b, b)
                 for i in order[start + mine.start:start + mine.stop]]
        self.train_view.epoch_seed = seed
        yield from self._to_device(self._loader(self.train_view, order, generator, True))

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(0)
        shard = list(range(self.val_images))[self.ranks.shard(self.val_images)]
        yield from self._to_device(self._loader(self.val_set, shard, generator, False))
