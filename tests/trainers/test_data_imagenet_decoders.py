"""ImageNet's two decoders: pil's batches equal today's loader's bit for bit (any worker count,
rank split, epochs through persistent workers); gpu's crop plan equals pil's and its pixels
stay within a stated tolerance of pil's (on the CPU here, on CUDA where present), with
files nvJPEG refuses decoded on the CPU; gpu is refused without CUDA."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from devices import CUDA
from PIL import Image

from benchmarks.imagenet_reference import ReferenceImageNet
from benchmarks.imagenet_reference import random_resized_box as reference_box
from trainers.config import make_config
from trainers.data import build_data
from trainers.data.device_decode import decode_jpegs
from trainers.data.imagenet import ImageFolderData
from trainers.data.imagenet_items import EncodedItems
from trainers.data.synthetic import write_synthetic_imagenet
from trainers.distributed import Ranks
from trainers.errors import UserError

CPU = torch.device("cpu")
SIZE, BATCH = 28, 4          # val resizes 36 -> 32, then cuts 28
# gpu vs pil, in pixel levels (0-255), over every value of a batch: decoders and resize
# filters differ by rounding. Measured on the CPU path: max 1.0, mean 0.28.
CPU_MAX, CPU_MEAN = 2.0, 0.5
# nvJPEG's IDCT and chroma upsampling are not libjpeg's: looser, on the mean and the 99th
# percentile (a few noisy pixels may differ more).
CUDA_MEAN, CUDA_Q99 = 2.0, 8.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """4:3 images like ImageNet's, 15 training (3 batches of 4 and one dropped) and 9 val."""
    root = tmp_path_factory.mktemp("imagenet43")
    write_synthetic_imagenet(root, classes=3, n_train_per_class=5, n_val_per_class=3,
                             image_size=48, height=36, seed=0)
    return root


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory, folder):
    """Files real ImageNet holds that nvJPEG refuses: a CMYK JPEG, a grayscale JPEG and a PNG
    named .JPEG, among ordinary ones."""
    import shutil

    root = tmp_path_factory.mktemp("imagenet_odd")
    shutil.copytree(folder, root, dirs_exist_ok=True)
    for split in ("train", "val"):
        files = sorted((root / split / "n10000000").iterdir())
        rgb = [Image.open(f).convert("RGB") for f in files[:3]]
        rgb[0].convert("CMYK").save(files[0], format="JPEG", quality=90)
        rgb[1].convert("L").save(files[1], format="JPEG", quality=90)
        rgb[2].save(files[2], format="PNG")
    return root


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalized batches back in pixel levels, to state tolerances in those."""
    std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
    return x * std * 255


def _epoch(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*[(x.cpu(), y.cpu()) for x, y in batches])
    return torch.cat(xs), torch.cat(ys)


def _assert_same(ours, reference) -> None:
    ours, reference = list(ours), list(reference)
    assert len(ours) == len(reference) > 0
    for (x, y), (rx, ry) in zip(ours, reference):
        assert x.dtype == torch.float32 and x.shape == rx.shape
        assert torch.equal(x.cpu(), rx.cpu()) and torch.equal(y.cpu(), ry.cpu())


@pytest.mark.parametrize("workers, ranks", [(0, Ranks()), (1, Ranks()), (2, Ranks()),
                                            (0, Ranks(0, 2)), (2, Ranks(1, 2))])
def test_pil_batches_equal_todays_bit_for_bit(folder, workers, ranks):
    data = ImageFolderData(folder, SIZE, BATCH, 5, workers, CPU, ranks)
    today = ReferenceImageNet(folder, SIZE, BATCH, 5, 0, CPU, ranks)
    for epoch in (0, 1):                         # the second epoch reuses the workers
        _assert_same(data.train_batches(epoch), today.train_batches(epoch))
    _assert_same(data.val_batches(), today.val_batches())
    # the comparison can fail: epochs differ, so equal batches are not trivially equal
    assert not torch.equal(_epoch(data.train_batches(0))[0], _epoch(data.train_batches(1))[0])


def test_two_ranks_together_are_one_process(folder):
    whole = _epoch(ReferenceImageNet(folder, SIZE, BATCH, 5, 0, CPU).train_batches(3))
    parts = [list(ImageFolderData(folder, SIZE, BATCH, 5, 0, CPU, Ranks(r, 2))
                  .train_batches(3)) for r in (0, 1)]
    joined = [torch.cat([a[0], b[0]]) for a, b in zip(*parts)]
    assert torch.equal(torch.cat(joined), whole[0])


def test_workers_persist_and_an_abandoned_epoch_does_not_leak(folder):
    data = ImageFolderData(folder, SIZE, BATCH, 1, 2, CPU)
    today = ReferenceImageNet(folder, SIZE, BATCH, 1, 0, CPU)
    next(iter(data.train_batches(0)))                  # stopped after one batch
    pids = [w.pid for w in data.loader()._iterator._workers]
    _assert_same(data.train_batches(1), today.train_batches(1))
    _assert_same(data.val_batches(), today.val_batches())
    assert [w.pid for w in data.loader()._iterator._workers] == pids and len(pids) == 2
    # a pass abandoned for another fails loudly rather than yield the other's batches
    first, second = data.train_batches(0), data.train_batches(1)
    next(first)
    next(second)
    with pytest.raises(RuntimeError, match="one pass at a time"):
        next(first)


def _reference_plans(folder, keys) -> list[list[int]]:
    """Today's per-image draws, made as today's worker made them (PIL's size, the seeded
    generator, the box then the flip)."""
    from torchvision.datasets import ImageFolder

    train = ImageFolder(str(folder / "train"))
    plans = []
    for _, seed, index in keys:
        image = train.loader(train.samples[index][0])
        g = torch.Generator().manual_seed((seed * 2_654_435_761 + index) % (2**63 - 1))
        box = reference_box(image.width, image.height, g)
        plans.append([*box, int(torch.rand(1, generator=g).item() < 0.5), 0, 0])
    return plans


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_gpu_crop_plan_equals_pil_for_any_workers_and_ranks(folder, workers):
    """The workers' plans alone, read without decoding anything."""
    for ranks in (Ranks(), Ranks(0, 2), Ranks(1, 2)):
        pil = ImageFolderData(folder, SIZE, BATCH, 7, 0, CPU, ranks)
        gpu = ImageFolderData(folder, SIZE, BATCH, 7, workers, CPU, ranks, decoder="gpu")
        keys = pil.train_keys(2)
        assert gpu.train_keys(2) == keys and len(keys) == 12 // ranks.world
        gpu.sampler.items = keys
        batches = list(gpu.loader())
        plans = torch.cat([b["plans"] for b in batches]).tolist()
        assert plans == _reference_plans(folder, keys)
        assert all(not b["pixels"] and (b["lengths"] > 0).all() for b in batches)  # bytes
        labels = torch.cat([b["labels"] for b in batches])
        assert torch.equal(labels, _epoch(pil.train_batches(2))[1])


def _close(gpu_x, pil_x, max_levels=None, mean_levels=None, q99_levels=None) -> None:
    diff = (_pixels(gpu_x.cpu()) - _pixels(pil_x.cpu())).abs()
    if max_levels is not None:
        assert diff.max() <= max_levels
    if mean_levels is not None:
        assert diff.mean() <= mean_levels
    if q99_levels is not None:
        assert diff.flatten().quantile(0.99) <= q99_levels
    assert diff.mean() > 0            # different decoders: equal output would mean one ran


def test_gpu_path_on_the_cpu_stays_within_a_pixel_level_of_pil(folder):
    pil = ImageFolderData(folder, SIZE, BATCH, 3, 0, CPU)
    gpu = ImageFolderData(folder, SIZE, BATCH, 3, 2, CPU, decoder="gpu")
    for batches in ((gpu.train_batches(4), pil.train_batches(4)),
                    (gpu.val_batches(), pil.val_batches())):
        (gx, gy), (px, py) = _epoch(batches[0]), _epoch(batches[1])
        assert torch.equal(gy, py) and gx.shape == px.shape and gx.dtype == torch.float32
        _close(gx, px, max_levels=CPU_MAX, mean_levels=CPU_MEAN)


def test_files_nvjpeg_refuses_are_decoded_by_pil_in_the_worker(odd_folder):
    from torchvision.datasets import ImageFolder

    items = EncodedItems(ImageFolder(str(odd_folder / "train")),
                         ImageFolder(str(odd_folder / "val")), SIZE)
    kinds = [items[("train", 0, i)][0].dim() for i in range(5)]
    assert kinds == [3, 3, 3, 1, 1]         # CMYK, gray, PNG: pixels; plain JPEGs: bytes
    cmyk = items[("val", 0)][0]
    assert cmyk.shape == (3, 36, 48) and cmyk.dtype == torch.uint8
    assert torch.equal(cmyk, torch.from_numpy(np.array(
        Image.open(sorted((odd_folder / "val" / "n10000000").iterdir())[0]).convert("RGB"))
        ).permute(2, 0, 1))
    pil = ImageFolderData(odd_folder, SIZE, BATCH, 3, 0, CPU)
    gpu = ImageFolderData(odd_folder, SIZE, BATCH, 3, 0, CPU, decoder="gpu")
    _close(_epoch(gpu.val_batches())[0], _epoch(pil.val_batches())[0],
           max_levels=CPU_MAX, mean_levels=CPU_MEAN)


def test_a_file_the_batched_decode_refuses_is_decoded_alone():
    png = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(png, format="PNG")
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, format="JPEG", quality=95)
    as_tensor = [torch.frombuffer(bytearray(b.getvalue()), dtype=torch.uint8)
                 for b in (jpeg, png)]
    out = decode_jpegs(as_tensor, CPU)
    assert [tuple(x.shape) for x in out] == [(3, 6, 8), (3, 6, 8)]
    assert torch.equal(out[1], torch.from_numpy(pixels).permute(2, 0, 1))   # PNG: lossless


@pytest.mark.parametrize("device", [CUDA])
def test_pil_on_cuda_equals_todays_cpu_batches(folder, device):
    data = ImageFolderData(folder, SIZE, BATCH, 5, 2, torch.device(device))
    assert next(iter(data.train_batches(0)))[0].device.type == "cuda"
    _assert_same(data.train_batches(0), ReferenceImageNet(folder, SIZE, BATCH, 5, 0, CPU)
                 .train_batches(0))
    _assert_same(data.val_batches(), ReferenceImageNet(folder, SIZE, BATCH, 5, 0, CPU)
                 .val_batches())


@pytest.mark.parametrize("device", [CUDA])
def test_gpu_decoder_on_cuda_within_tolerance_of_pil(folder, odd_folder, device):
    for root in (folder, odd_folder):          # odd_folder: the CPU fallback files
        config = make_config("imagenet", str(root), batch_size=BATCH, seed=3, workers=2,
                             synthetic_image_size=SIZE, image_decoder="gpu", device=device)
        gpu = build_data(config, torch.device(device))
        pil = ImageFolderData(root, SIZE, BATCH, 3, 0, CPU)
        x, _ = next(iter(gpu.train_batches(0)))
        assert x.device.type == "cuda" and x.dtype == torch.float32
        for g, p in ((gpu.train_batches(4), pil.train_batches(4)),
                     (gpu.val_batches(), pil.val_batches())):
            (gx, gy), (px, py) = _epoch(g), _epoch(p)
            assert torch.equal(gy, py)
            _close(gx, px, mean_levels=CUDA_MEAN, q99_levels=CUDA_Q99)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_decoder_is_refused_without_cuda(folder):
    config = make_config("imagenet", str(folder), batch_size=BATCH, seed=0, workers=0,
                         synthetic_image_size=SIZE, image_decoder="gpu")
    with pytest.raises(UserError) as err:
        build_data(config, CPU)
    message = str(err.value)
    assert "image_decoder gpu" in message and "image_decoder pil" in message
    assert "\n" not in message


def test_gpu_decoder_config_checks_and_trial_ids():
    from orchestrator.plan.trial_id import make_trial_id
    from trainers.config import ConfigError

    with pytest.raises(ConfigError, match="image_decoder 'gpu' needs ImageNet on a CUDA "
                                          r"device \(device is cpu\): use image_decoder pil"):
        make_config("imagenet", "/d", image_decoder="gpu", device="cpu")
    with pytest.raises(ConfigError, match="only ImageNet decodes JPEGs"):
        make_config("cifar10", "/d", image_decoder="gpu")
    with pytest.raises(ConfigError, match="image_decoder 'nvjpeg': choose one of pil, gpu"):
        make_config("imagenet", "/d", image_decoder="nvjpeg")
    pil = make_config("imagenet", "/d", seed=1)
    assert pil.image_decoder == "pil"
    assert make_trial_id(make_config("imagenet", "/d", seed=1, image_decoder="pil")) \
        == make_trial_id(pil)
    assert make_trial_id(pil.replace(image_decoder="gpu")) != make_trial_id(pil)
