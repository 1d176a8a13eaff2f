"""The device half of image_decoder gpu: batched nvJPEG decoding, then each image's crop,
antialiased resize and flip as tensor ops on the training device.

Decoding uses torchvision.io.decode_jpeg(list, device='cuda'), one nvJPEG call per batch.
torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec; TorchCodec is
not a dependency here, so the call is wrapped in `decode_jpegs` alone, to be swapped there.
Resizes run in float32 without rounding back to uint8, so pixels differ from PIL's by
rounding and filter details (docs/imagenet.md states the tolerance the tests hold).
"""

from __future__ import annotations

import io
import warnings

import torch
import torch.nn.functional as F


def _pil_decode(data: torch.Tensor) -> torch.Tensor:
    """Full RGB uint8 (3, H, W) pixels of encoded bytes, on the CPU with PIL."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
        return TF.pil_to_tensor(image.convert("RGB"))


def decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 (3, H, W) images on `device`, decoded together; when the batched call refuses
    one file, each is decoded alone and a refused one by PIL on the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29's deprecation notice, once per call: see the module docstring
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass
        out = []
        for data in encoded:
            try:
                out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(_pil_decode(data).to(device))
        return out


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(3, h, w) float -> (3, height, width), bilinear with antialiasing as PIL resizes."""
    return F.interpolate(image[None], size=(height, width), mode="bilinear",
                         align_corners=False, antialias=True)[0]


def apply_plans(images: list[torch.Tensor], plans: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, size, size) float32 pixels in [0, 255] from uint8 images of any size and their
    plans (imagenet_items.PLAN_COLUMNS): a training plan crops then resizes and flips; a
    validation plan (resize_h > 0) resizes the whole image then cuts the center."""
    out = []
    for image, (top, left, h, w, flip, rh, rw) in zip(images, plans.tolist()):
        pixels = image.float()
        if rh > 0:
            pixels = _resize(pixels, rh, rw)[:, top:top + h, left:left + w]
        else:
            pixels = _resize(pixels[:, top:top + h, left:left + w], size, size)
            if flip:
                pixels = pixels.flip(-1)
        out.append(pixels.clamp_(0, 255))
    return torch.stack(out)


def payloads(batch: dict) -> list[torch.Tensor]:
    """Each image's payload of a collated batch (imagenet_items.collate_encoded): a 1-d view
    of its file bytes, or the 3-d pixels a worker decoded."""
    out, start = [], 0
    for i, n in enumerate(batch["lengths"].tolist()):
        if n < 0:
            out.append(batch["pixels"][i])
        else:
            out.append(batch["bytes"][start:start + n])
            start += n
    return out


def decode_batch(batch: dict, size: int, device: torch.device) -> torch.Tensor:
    """A collated batch of EncodedItems -> (B, 3, size, size) float32 [0, 255] on `device`.
    Files the workers decoded (3-d payloads) skip nvJPEG."""
    items = payloads(batch)
    encoded = [i for i, p in enumerate(items) if p.dim() == 1]
    images: list[torch.Tensor | None] = [None] * len(items)
    if encoded:
        for i, image in zip(encoded, decode_jpegs([items[i] for i in encoded], device)):
            images[i] = image
    for i, p in enumerate(items):
        if p.dim() == 3:
            images[i] = p.to(device, non_blocking=True)
    return apply_plans(images, batch["plans"], size)
