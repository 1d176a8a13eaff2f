"""ImageNet as DIR/train and DIR/val ImageFolders, decoded and augmented by DataLoader workers.

Reproducibility: the shuffle order comes from the epoch's generator, and each training image
draws its crop and flip from its own generator seeded by (epoch seed, image index). So the
batches of an epoch depend only on (seed, epoch), not on the number of workers nor on which
worker decoded what, and no process touches the global RNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from trainers.data.bundle import DataBundle, epoch_seed
from trainers.distributed import Ranks
from trainers.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)            # Inception-style crop area range, as torchvision's default
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
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class _TrainView(Dataset):
    """ImageFolder samples with a per-image seeded RandomResizedCrop + horizontal flip."""

    def __init__(self, folder, size: int) -> None:
        self.folder = folder
        self.size = size
        self.epoch_seed = 0      # set before each epoch's DataLoader copies it into workers
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


def _image_folder(root: Path, split: str, transform=None):
    from torchvision.datasets import ImageFolder

    folder = root / split
    try:
        return ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise UserError(
            f"ImageNet data not found in {root} ({split}: {err}): expected {root}/train/<class>/"
            f"*.JPEG and {root}/val/<class>/*.JPEG image folders; run `onorm data "
            f"synth-imagenet {root}` for a synthetic one, or place the dataset there") from None


class ImageFolderData(DataBundle):
    """Train/val ImageFolders read by `workers` DataLoader processes, batches moved to device.

    With several ranks, each one's loader decodes only its slice of every global batch and
    its shard of the validation images."""

    def __init__(self, root: str | Path, size: int, batch_size: int, seed: int | None,
                 workers: int, device: torch.device, ranks: Ranks = Ranks()) -> None:
        from torchvision import transforms as T

        root = Path(root)
        train = _image_folder(root, "train")
        val = _image_folder(root, "val", T.Compose([
            T.Resize(size * 8 // 7),     # 256 for 224, the usual ImageNet val resize
            T.CenterCrop(size), _to_normalized_tensor()]))
        if train.classes != val.classes:
            raise UserError(f"ImageNet data in {root} is malformed: train/ has "
                            f"{len(train.classes)} classes, val/ has {len(val.classes)}; "
                            "both need the same class folders")
        if len(train) < batch_size:
            raise UserError(f"batch_size {batch_size} is larger than the {len(train)} training "
                            f"images in {root}/train: lower batch_size or add images")
        self.device = torch.device(device)
        self.train_view = _TrainView(train, size)
        self.val_set = val
        self.num_classes = len(train.classes)
        self.input_size = size
        self.batch_size = batch_size
        self.seed = seed
        self.workers = workers
        self.ranks = ranks
        self.train_len = len(train) // batch_size
        self.val_images = len(val)

    @classmethod
    def from_config(cls, config, device: torch.device,
                    ranks: Ranks = Ranks()) -> "ImageFolderData":
        size = config.synthetic_image_size if config.synthetic_image_size > 0 else 224
        return cls(config.data_dir, size, config.batch_size, config.seed, config.workers,
                   device, ranks)

    def _loader(self, dataset: Dataset, order: list[int] | None,
                generator: torch.Generator, drop_last: bool) -> DataLoader:
        # The loader's own generator only seeds worker processes (our transforms ignore
        # them); passing it keeps DataLoader from drawing that seed from the global RNG.
        return DataLoader(dataset, batch_size=self.batch_size // self.ranks.world, sampler=order,
                          num_workers=self.workers, pin_memory=self.device.type == "cuda",
                          drop_last=drop_last, generator=generator)

    def _to_device(self, loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in loader:
            yield (images.to(self.device, non_blocking=True),
                   labels.to(self.device, non_blocking=True))

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed = epoch_seed(self.seed, epoch)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.train_view), generator=generator).tolist()
        b, mine = self.batch_size, self.ranks.batch_slice(self.batch_size)
        # my slice of each whole global batch (the incomplete last one is dropped)
        order = [i for start in range(0, self.train_len * b, b)
                 for i in order[start + mine.start:start + mine.stop]]
        self.train_view.epoch_seed = seed
        yield from self._to_device(self._loader(self.train_view, order, generator, True))

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(0)
        shard = list(range(self.val_images))[self.ranks.shard(self.val_images)]
        yield from self._to_device(self._loader(self.val_set, shard, generator, False))
