"""The optimizer recipe: batch-size rescaling, weight-decay groups by module kind, lr schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers.config import make_config
from trainers.models import build_model
from trainers.optim import build_optimizer, build_scheduler, param_groups
from trainers.recipe import rescaled_lr_momentum


def test_rescaling_is_identity_at_base_batch():
    assert rescaled_lr_momentum(0.1, 0.9, 128, 128) == (0.1, 0.9)


def test_rescaling_formula():
    lr, m = rescaled_lr_momentum(0.1, 0.9, 256, 128)
    assert m == pytest.approx(0.81)
    assert lr == pytest.approx(0.1 * 2 * (1 - 0.81) / (1 - 0.9))   # 0.38
    lr, m = rescaled_lr_momentum(0.1, 0.9, 32, 128)
    assert m == pytest.approx(0.9 ** 0.25)
    assert lr == pytest.approx(0.1 * 0.25 * (1 - 0.9 ** 0.25) / 0.1)
    assert rescaled_lr_momentum(0.1, 0.0, 64, 128) == (pytest.approx(0.05), 0.0)


def test_optimizer_uses_rescaled_values_and_imagenet_base():
    config = make_config("imagenet", "/d", arch="resnet18", batch_size=128, norm="batch")
    model = build_model(config, 10, 32)
    opt = build_optimizer(model, config)
    lr, m = rescaled_lr_momentum(0.1, 0.9, 128, 256)  # B0 = 256 on ImageNet
    assert opt.param_groups[0]["lr"] == pytest.approx(lr)
    assert opt.param_groups[0]["momentum"] == pytest.approx(m)


def _groups(norm: str, mode: str):
    config = make_config("cifar10", "/d", depth=8, norm=norm)
    model = build_model(config, 10, 32)
    groups = param_groups(model, 5e-4, mode)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    exempt = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(decayed) + len(exempt) == len(names)
    return {names[i] for i in decayed}, {names[i] for i in exempt}


@pytest.mark.parametrize("norm", ["batch", "online", "layer", "group", "instance"])
def test_exempt_mode_frees_every_norm_parameter(norm):
    decayed, exempt = _groups(norm, "exempt")
    # stem + 2 per block + 2 projections = 9 normalizers, each with weight and bias
    assert len(exempt) == 18
    assert all(n.endswith((".weight", ".bias")) for n in exempt)
    assert "conv1.weight" in decayed and "fc.weight" in decayed and "fc.bias" in decayed
    assert "bn1.weight" in exempt and "layer2.0.downsample.1.bias" in exempt


def test_bias_mode_frees_only_norm_biases():
    decayed, exempt = _groups("online", "bias")
    assert len(exempt) == 9 and all(n.endswith(".bias") for n in exempt)
    assert "bn1.weight" in decayed and "fc.bias" in decayed


def test_none_mode_decays_everything():
    decayed, exempt = _groups("batch", "none")
    assert exempt == set() and "bn1.bias" in decayed


def test_norm_found_by_kind_not_name():
    # a normalizer under an unusual attribute name is still exempt; a conv named "bn" is not
    model = nn.Sequential()
    model.add_module("bn", nn.Conv2d(3, 4, 3))
    model.add_module("whatever", nn.GroupNorm(2, 4))
    groups = param_groups(model, 1e-4, "exempt")
    exempt = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert exempt == {id(model.whatever.weight), id(model.whatever.bias)}


def _lrs(milestones, epochs, epochs_done=0):
    config = make_config("cifar10", "/d", lr_milestones=milestones, lr_multiplier=0.1)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, config, epochs_done)
    lrs = []
    for epoch in range(epochs_done + 1, epochs + 1):
        if epoch > 1:
            opt.step()
            sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def test_milestone_k_lowers_lr_from_epoch_k_plus_1():
    assert _lrs([2], 4) == pytest.approx([1.0, 1.0, 0.1, 0.1])
    assert _lrs([1, 3], 5) == pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01])


def test_manual_start_epoch_lands_on_the_same_schedule():
    assert _lrs([2, 4], 6, epochs_done=3) == pytest.approx(_lrs([2, 4], 6)[3:])
