"""Every normalizer learns: a few epochs on synthetic CIFAR-10 / ImageNet beat chance clearly."""

from __future__ import annotations

import pytest
import torch
from devices import DEVICES

from trainers.config import make_config
from trainers.train import train

# Instance norm removes each image's mean colour, which carries most of the synthetic class
# signal; it learns from the remaining colour wave, which takes more and larger steps.
CIFAR_RECIPES = {
    "batch": dict(lr=0.4, batch_size=32, epochs=4),
    "group": dict(lr=0.4, batch_size=32, epochs=4),
    "layer": dict(lr=0.4, batch_size=32, epochs=4),
    "online": dict(lr=0.4, batch_size=32, epochs=4),
    "none": dict(lr=0.4, batch_size=32, epochs=4),
    "instance": dict(lr=2.0, batch_size=16, epochs=6),
}


def _train(config, tmp_path):
    accs = []
    outcome = train(config, lambda m, p: accs.append(m["val_acc1"]), model_dir=tmp_path,
                    progress=False, print_freq=0, log=lambda s: None)
    assert outcome.status == "completed" and len(accs) == config.epochs
    assert outcome.best_val_acc1 == max(accs)
    return outcome


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", list(CIFAR_RECIPES))
def test_cifar10_resnet8_beats_chance(norm, device, cifar10_dir, tmp_path):
    config = make_config("cifar10", str(cifar10_dir), depth=8, norm=norm, seed=0, workers=0,
                         device=device, lr_milestones=[100], **CIFAR_RECIPES[norm])
    outcome = _train(config, tmp_path)
    assert outcome.best_val_acc1 >= 30.0     # chance: 10%


# about 12 s each: -m slow (the default run trains ImageNet folders in test_cli_train.py)
@pytest.mark.slow
@pytest.mark.parametrize("norm", ["batch", "group", "layer", "online", "none", "instance"])
def test_imagenet_resnet18_beats_chance(norm, imagenet_dir, imagenet64_dir, tmp_path):
    # at 32 pixels ResNet-18's last stage is 1x1, where instance norm outputs only its bias
    root, size, lr = (imagenet64_dir, 64, 0.4) if norm == "instance" else (imagenet_dir, 32, 0.1)
    config = make_config("imagenet", str(root), arch="resnet18", synthetic_image_size=size,
                         norm=norm, gn_num_groups=8, epochs=3, batch_size=16, lr=lr,
                         lr_milestones=[100], seed=0, workers=0, device="cpu")
    outcome = _train(config, tmp_path)
    assert outcome.best_val_acc1 >= 50.0     # chance: 25% (4 classes)


def test_cifar100_trains_with_its_class_count(cifar100_dir, tmp_path):
    config = make_config("cifar100", str(cifar100_dir), depth=8, norm="online", epochs=1,
                         batch_size=64, seed=0, workers=0, device="cpu")
    outcome = _train(config, tmp_path)
    state = torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)
    assert state["model"]["fc.weight"].shape == (100, 64)
    assert 0 <= outcome.final_metrics["val_acc5"] <= 100
