"""Shared fixtures: small synthetic datasets in the real on-disk formats, written once a session."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainers.config import make_config


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models gain little from intra-op threads, and when the cores are shared OpenMP's
    waiting threads slow these steps several-fold; restored so other packages are unaffected."""
    import torch
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory) -> Path:
    from trainers.data.synthetic import write_synthetic_cifar
    root = tmp_path_factory.mktemp("cifar10")
    write_synthetic_cifar(root, classes=10, n_train=256, n_test=128, seed=0)
    return root


@pytest.fixture(scope="session")
def cifar100_dir(tmp_path_factory) -> Path:
    from trainers.data.synthetic import write_synthetic_cifar
    root = tmp_path_factory.mktemp("cifar100")
    write_synthetic_cifar(root, classes=100, n_train=256, n_test=100, seed=0)
    return root


def _synthetic_imagenet(tmp_path_factory, image_size: int) -> Path:
    """4 classes, 32 train / 16 val images each, in ImageFolder layout."""
    from trainers.data.synthetic import write_synthetic_imagenet
    root = tmp_path_factory.mktemp(f"imagenet{image_size}")
    write_synthetic_imagenet(root, classes=4, n_train_per_class=32, n_val_per_class=16,
                             image_size=image_size, seed=0)
    return root


@pytest.fixture(scope="session")
def imagenet_dir(tmp_path_factory) -> Path:
    return _synthetic_imagenet(tmp_path_factory, 32)


@pytest.fixture
def tiny_cifar(cifar10_dir):
    """A factory for quick CIFAR-10 trial configs: depth 8, batch 64, no loader workers."""
    def make(**overrides):
        values = dict(depth=8, epochs=2, batch_size=64, seed=0, workers=0, device="cpu")
        values.update(overrides)
        return make_config("cifar10", str(cifar10_dir), **values)
    return make


@pytest.fixture(scope="session")
def two_batch_cifar(tmp_path_factory):
    """A factory for configs on 16 training images in batches of 8 (8 to validate), for tests
    of many short runs (half-precision convolutions are slow on the CPU; resume needs epochs,
    not images)."""
    from trainers.data.synthetic import write_synthetic_cifar

    root = tmp_path_factory.mktemp("cifar16")
    write_synthetic_cifar(root, classes=10, n_train=16, n_test=8, seed=0)

    def make(**overrides):
        values = dict(depth=8, epochs=2, batch_size=8, seed=0, workers=0, device="cpu")
        return make_config("cifar10", str(root), **{**values, **overrides})
    return make


@pytest.fixture(scope="session")
def imagenet64_dir(tmp_path_factory) -> Path:
    """64-pixel images: ResNet-18's last stage is then 2x2, not 1x1 (instance norm needs it)."""
    return _synthetic_imagenet(tmp_path_factory, 64)
