"""What a DataLoader worker does to one ImageNet image: the per-image crop plan and both
decoders' worker halves.

A worker is given an item key, never a bare index: ("train", epoch seed, index) or
("val", index). The epoch seed travels with the key, so workers can live across epochs (a
dataset copied into them once cannot learn a new epoch any other way) and each image still
draws its crop and flip from its own generator seeded by (epoch seed, index), in any worker.

- `PilItems` (image_decoder pil): decode with PIL, crop and resize on the PIL image as the
  seed scripts do, and return uint8 pixels; the trainer normalizes on the device.
- `EncodedItems` (image_decoder gpu): read the file's bytes and its size from the header and
  return them with the crop plan; the device decodes (trainers/data/device_decode.py). A
  file nvJPEG cannot decode (not a JPEG, or not a 3-channel one: CMYK, grayscale) is
  decoded here with PIL instead and travels as pixels.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

CROP_SCALE = (0.08, 1.0)            # Inception-style crop area range, as torchvision's default
CROP_RATIO = (3 / 4, 4 / 3)
PLAN_COLUMNS = 7                    # top, left, height, width, flip, resize_h, resize_w


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


def train_plan(epoch_seed: int, index: int, width: int, height: int) -> tuple[int, ...]:
    """(top, left, h, w, flip) of training image `index` in the epoch of `epoch_seed`: the
    same draws, from the same generator, for both decoders."""
    generator = torch.Generator().manual_seed((epoch_seed * 2_654_435_761 + index) % (2**63 - 1))
    top, left, h, w = random_resized_box(width, height, generator)
    flip = torch.rand(1, generator=generator).item() < 0.5
    return top, left, h, w, int(flip)


def val_plan(width: int, height: int, size: int) -> tuple[int, ...]:
    """Resize(size * 8 // 7) then CenterCrop(size) as torchvision computes them: the plan
    (top, left, size, size, 0, resize_h, resize_w), the crop in resized coordinates."""
    short = size * 8 // 7
    if width <= height:
        rw, rh = short, int(short * height / width)
    else:
        rh, rw = short, int(short * width / height)
    top = int(round((rh - size) / 2.0))
    left = int(round((rw - size) / 2.0))
    return top, left, size, size, 0, rh, rw


class EpochItems(Sampler):
    """The item keys of the pass about to start; reassigned before each pass, and read by
    the DataLoader in the main process, so persistent workers see every epoch's keys."""

    def __init__(self) -> None:
        self.items: list[tuple] = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class PilItems(Dataset):
    """uint8 (3, size, size) pixels and the label of one item key, decoded by PIL."""

    def __init__(self, train, val, size: int) -> None:
        self.train, self.val, self.size = train, val, size

    def __getitem__(self, key: tuple) -> tuple[torch.Tensor, int]:
        import torchvision.transforms.functional as TF

        if key[0] == "val":
            path, label = self.val.samples[key[1]]
            image = self.val.loader(path)
            image = TF.center_crop(TF.resize(image, self.size * 8 // 7), self.size)
            return TF.pil_to_tensor(image), label
        _, seed, index = key
        path, label = self.train.samples[index]
        image = self.train.loader(path)
        top, left, h, w, flip = train_plan(seed, index, image.width, image.height)
        image = TF.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
        if flip:
            image = TF.hflip(image)
        return TF.pil_to_tensor(image), label


def nvjpeg_can_decode(image_format: str | None, mode: str) -> bool:
    """Baseline/progressive 3-channel JPEGs; PIL reports YCbCr ones as mode RGB."""
    return image_format == "JPEG" and mode == "RGB"


class EncodedItems(Dataset):
    """An item key's file bytes (uint8, 1-d) or, for a file nvJPEG refuses, its full RGB
    pixels (uint8, 3-d); its plan (PLAN_COLUMNS int64) and label."""

    def __init__(self, train, val, size: int) -> None:
        self.train, self.val, self.size = train, val, size

    def __getitem__(self, key: tuple) -> tuple[torch.Tensor, torch.Tensor, int]:
        from PIL import Image

        folder = self.val if key[0] == "val" else self.train
        path, label = folder.samples[key[-1]]
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(path) as image:        # reads the header only, until .convert
            width, height = image.size
            if nvjpeg_can_decode(image.format, image.mode):
                payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            else:
                import torchvision.transforms.functional as TF
                payload = TF.pil_to_tensor(image.convert("RGB"))
        if key[0] == "val":
            plan = val_plan(width, height, self.size)
        else:
            plan = train_plan(key[1], key[2], width, height) + (0, 0)
        return payload, torch.tensor(plan, dtype=torch.int64), label


def collate_encoded(items: list[tuple[torch.Tensor, torch.Tensor, int]]) -> dict[str, Any]:
    """The batch's file bytes concatenated into one tensor with their lengths (one shared-
    memory segment, one file descriptor per batch instead of one per image); the rare
    pixel payloads by position; plans and labels stacked."""
    encoded = [p for p, _, _ in items if p.dim() == 1]
    return {"bytes": torch.cat(encoded) if encoded else torch.empty(0, dtype=torch.uint8),
            "lengths": torch.tensor([p.numel() if p.dim() == 1 else -1 for p, _, _ in items]),
            "pixels": {i: p for i, (p, _, _) in enumerate(items) if p.dim() == 3},
            "plans": torch.stack([plan for _, plan, _ in items]),
            "labels": torch.tensor([label for _, _, label in items], dtype=torch.int64)}
