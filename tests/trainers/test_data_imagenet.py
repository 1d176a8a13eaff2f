"""ImageNet-style folders: class count, val transforms, seeded training crops, bad folders."""

from __future__ import annotations

import shutil

import pytest
import torch

from trainers.config import make_config
from trainers.data import build_data
from trainers.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from trainers.data.imagenet_items import random_resized_box
from trainers.data.synthetic import write_synthetic_imagenet
from trainers.errors import UserError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    write_synthetic_imagenet(root, classes=3, n_train_per_class=6, n_val_per_class=2,
                             image_size=40, seed=0)
    return root


def _config(root, **overrides):
    values = dict(batch_size=4, seed=0, workers=0, synthetic_image_size=32)
    values.update(overrides)
    return make_config("imagenet", str(root), **values)


def test_counts_and_val_transform_values(folder):
    import torchvision.transforms.functional as TF
    from PIL import Image

    data = build_data(_config(folder), CPU)
    assert (data.num_classes, data.input_size) == (3, 32)
    assert (data.train_len, data.val_images) == (18 // 4, 6)
    batches = list(data.val_batches())
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 32, 32), (2, 3, 32, 32)]
    labels = torch.cat([y for _, y in batches])
    assert labels.tolist() == [0, 0, 1, 1, 2, 2] and labels.dtype == torch.int64
    # Resize(32 * 8 // 7 = 36) then CenterCrop(32), normalized with ImageNet's constants.
    first = sorted((folder / "val" / "n10000000").iterdir())[0]
    image = TF.center_crop(TF.resize(Image.open(first).convert("RGB"), 36), 32)
    pixels = TF.to_tensor(image)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert (IMAGENET_MEAN, IMAGENET_STD) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert torch.allclose(batches[0][0][0], (pixels - mean) / std, atol=1e-5)
    again = torch.cat([x for x, _ in data.val_batches()])
    assert torch.equal(again, torch.cat([x for x, _ in batches]))   # deterministic


def test_default_size_is_224(folder):
    data = build_data(_config(folder, synthetic_image_size=0, batch_size=8), CPU)
    assert data.input_size == 224
    assert next(iter(data.val_batches()))[0].shape == (6, 3, 224, 224)    # all 6 val images


def test_training_batches_depend_only_on_seed_and_epoch(folder):
    one = build_data(_config(folder), CPU)
    torch.manual_seed(7)
    a = list(one.train_batches(2))
    after = torch.rand(2)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(2))                          # global RNG untouched
    assert len(a) == 4 and all(x.shape == (4, 3, 32, 32) for x, _ in a)   # 18 -> 4 x 4
    # Two worker processes decode in a different interleaving; batches are identical.
    b = list(build_data(_config(folder, workers=2), CPU).train_batches(2))
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = list(one.train_batches(3))
    assert not torch.equal(torch.cat([x for x, _ in a]), torch.cat([x for x, _ in c]))


def test_random_resized_box_ranges():
    g = torch.Generator().manual_seed(0)
    areas = []
    for _ in range(300):
        top, left, h, w = random_resized_box(50, 40, g)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 50
        areas.append(h * w / 2000)
        assert 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1                     # rounding slack
    assert min(areas) >= 0.08 - 0.01 and max(areas) <= 1.0
    assert min(areas) < 0.2 and max(areas) > 0.7                       # the range is used
    # In a 100:1 strip every sampled box is taller than 10: the fallback is the central 4:3.
    assert random_resized_box(1000, 10, torch.Generator().manual_seed(0)) == (0, 493, 10, 13)


def test_missing_and_mismatched_folders_are_user_errors(tmp_path, folder):
    with pytest.raises(UserError) as err:
        build_data(_config(tmp_path / "none"), CPU)
    message = str(err.value)
    assert str(tmp_path / "none") in message and "/train/<class>/*.JPEG" in message
    assert "onorm data synth-imagenet" in message and "\n" not in message
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    shutil.rmtree(copy / "val" / "n10000002")
    with pytest.raises(UserError, match="train/ has 3 classes, val/ has 2"):
        build_data(_config(copy), CPU)


def test_a_negative_synthetic_image_size_is_refused():
    # it used to fall back silently to the real 224-pixel crops
    with pytest.raises(UserError, match=r"synthetic_image_size must be in \[0, 1024\]"):
        make_config("imagenet", "/d", synthetic_image_size=-5)
