"""Models: every normalizer builds and trains a step; depth rule; parameter count; init."""

from __future__ import annotations

import pytest
import torch
from devices import DEVICES
from torch import nn

from norms import NORM_MODES
from trainers.config import NORM_CHANNELS, make_config
from trainers.errors import UserError
from trainers.models import CifarResNet, build_cifar_resnet, build_model, is_norm_module


def _config(dataset: str, norm: str, **kw):
    return make_config(dataset, "/nonexistent", norm=norm, seed=0, **kw)


def _one_sgd_step(model: nn.Module, x: torch.Tensor, num_classes: int,
                  device: str = "cpu") -> None:
    model.to(device)
    x = x.to(device)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    labels = torch.arange(x.shape[0], device=device) % num_classes
    loss = nn.functional.cross_entropy(model(x), labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    # every parameter gets a gradient, layer norm's per-element affine included
    assert all(changed), [n for (n, _), c in zip(model.named_parameters(), changed) if not c]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", NORM_MODES)
def test_resnet20_every_norm_trains_one_step(norm, device):
    torch.manual_seed(0)
    model = build_model(_config("cifar10", norm, depth=20), num_classes=10, input_size=32)
    _one_sgd_step(model, torch.randn(4, 3, 32, 32), 10, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", NORM_MODES)
def test_resnet50_every_norm_trains_one_step(norm, device):
    torch.manual_seed(0)
    config = _config("imagenet", norm, arch="resnet50", gn_num_groups=32)
    model = build_model(config, num_classes=7, input_size=64)
    assert model.fc.out_features == 7
    _one_sgd_step(model, torch.randn(2, 3, 64, 64), 7, device)


@pytest.mark.parametrize("depth", [7, 10, 21, 2])
def test_depth_must_be_6n_plus_2(depth):
    with pytest.raises((UserError, ValueError), match=f"depth {depth} is not 6n\\+2"):
        build_cifar_resnet(depth, 10, nn.BatchNorm2d)


def test_resnet20_parameter_count_and_shape():
    model = build_cifar_resnet(20, 10, nn.BatchNorm2d)
    # 3 stages x 3 blocks; known value for the He et al. CIFAR ResNet-20 with 1x1 projections
    assert sum(p.numel() for p in model.parameters()) == 272474
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 9
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    deeper = build_cifar_resnet(56, 100, nn.BatchNorm2d)
    assert len([m for m in deeper.modules() if type(m).__name__ == "BasicBlock"]) == 27


@pytest.mark.parametrize("norm", NORM_MODES)
@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_init_norm_weight_one_bias_zero_and_kaiming_convs(norm, dataset):
    torch.manual_seed(0)
    kw = dict(arch="resnet18") if dataset == "imagenet" else dict(depth=8)
    model = build_model(_config(dataset, norm, **kw), num_classes=10, input_size=32)
    norms_found = [m for m in model.modules() if is_norm_module(m)]
    if norm == "none":
        assert norms_found == []
    else:
        with_affine = [m for m in norms_found if getattr(m, "weight", None) is not None]
        assert with_affine, "normalizers should carry an affine"
        for m in with_affine:
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels * k * k))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() > 20000]
    for conv in convs:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        expected = (2.0 / fan_out) ** 0.5
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)


def test_online_norm_receives_decay_factors():
    config = _config("cifar10", "online", depth=8, afwd=0.75, abkw=0.5, ecm="ac")
    model = build_model(config, num_classes=10, input_size=32)
    layers = [m for m in model.modules() if type(m).__name__ == "OnlineNorm2d"]
    assert len(layers) == 1 + 3 * 2 + 2  # stem, 3 blocks x 2, 2 projections
    assert all(m.alpha_fwd == 0.75 and m.alpha_bkw == 0.5 and m.ecm == "ac" for m in layers)


def test_pretrained_needs_batch_norm_and_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    config = _config("imagenet", "online", arch="resnet18", pretrained=True)
    with pytest.raises(UserError, match="exist only for batch norm"):
        build_model(config, num_classes=1000, input_size=32)
    config = config.replace(norm="batch")
    with pytest.raises(UserError, match="resnet18-f37072fd.pth.*checkpoints.*drop --pretrained"):
        build_model(config, num_classes=1000, input_size=32)


def test_pretrained_loads_cached_weights(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(num_classes=1000)
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    config = _config("imagenet", "batch", arch="resnet18", pretrained=True)
    model = build_model(config, num_classes=1000, input_size=32)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.fc.bias, reference.fc.bias)


def test_group_count_must_divide_channels():
    with pytest.raises(UserError, match="gn_num_groups 3 does not divide"):
        build_model(_config("cifar10", "group", depth=8, gn_num_groups=3), 10, 32)


@pytest.mark.parametrize("arch", sorted(NORM_CHANNELS))
def test_norm_channels_are_the_channel_counts_the_models_normalize(arch):
    # the plan checks gn_num_groups against NORM_CHANNELS before Ray: it must be the truth
    import torchvision.models as tvm

    seen = set()

    def norm_layer(channels):
        seen.add(channels)
        return nn.Identity()

    with torch.device("meta"):   # the shapes only, no memory or init
        if arch == "resnet":
            CifarResNet(20, 10, norm_layer)
        else:
            getattr(tvm, arch)(weights=None, norm_layer=norm_layer)
    assert tuple(sorted(seen)) == NORM_CHANNELS[arch]
