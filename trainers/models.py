"""The paper's networks: the CIFAR ResNet (depth 6n+2) and torchvision's ImageNet ResNets/ResNeXts.

Models take a `norm_layer` callable (channels -> module) and never branch on the norm kind;
the only place that knows the kinds is the table of normalizers (norms.modes, built by
norms.registry).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from trainers.config import IMAGENET_ARCHS, check_cifar_depth
from trainers.errors import UserError

if TYPE_CHECKING:
    from trainers.config import TrialConfig

NormLayer = Callable[[int], nn.Module]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1-conv projection when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm_layer: NormLayer):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), norm_layer(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: stem conv 16, three stages of n BasicBlocks (16/32/64)."""

    def __init__(self, depth: int, num_classes: int, norm_layer: NormLayer):
        super().__init__()
        check_cifar_depth(depth)
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = norm_layer(16)
        self.relu = nn.ReLU(inplace=True)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, norm_layer))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def is_norm_module(module: nn.Module) -> bool:
    """True for a normalization layer of any kind (by class, never by name): the built-ins,
    and the classes of the layers a plugin normalizer has built (norms/registry.py)."""
    import norms

    return isinstance(module, norms.norm_layer_classes())


def init_weights(model: nn.Module) -> None:
    """The seed scripts' init: Kaiming-normal convs (fan_out, relu), norm weight 1, bias 0.

    Applied to every normalizer kind alike (torchvision only does it for batch/group norm);
    parameters not yet materialized (layer norm before its first input) are skipped here and
    initialized by `build_model` after materialization.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    init_norms(model)


def init_norms(model: nn.Module) -> None:
    """Weight 1 and bias 0 on every normalizer's affine that exists yet."""
    from torch.nn.parameter import UninitializedParameter
    for module in model.modules():
        if not is_norm_module(module):
            continue
        for name, value in (("weight", 1.0), ("bias", 0.0)):
            param = getattr(module, name, None)
            if isinstance(param, torch.Tensor) and not isinstance(param, UninitializedParameter):
                with torch.no_grad():
                    param.fill_(value)


def build_cifar_resnet(depth: int, num_classes: int, norm_layer: NormLayer) -> nn.Module:
    """The CIFAR ResNet of the paper, depth 6n+2 (ResNet-20: n=3, about 0.27M parameters)."""
    model = CifarResNet(depth, num_classes, norm_layer)
    init_weights(model)
    return model


def build_imagenet_resnet(arch: str, num_classes: int, norm_layer: NormLayer) -> nn.Module:
    """torchvision's ResNet/ResNeXt `arch` with `norm_layer` injected, seed-script init."""
    if arch not in IMAGENET_ARCHS:
        raise UserError(f"arch {arch!r}: choose one of {', '.join(IMAGENET_ARCHS)}")
    import torchvision.models as tvm
    model = getattr(tvm, arch)(weights=None, num_classes=num_classes, norm_layer=norm_layer)
    init_weights(model)
    return model


def _pretrained_path(config: "TrialConfig", num_classes: int) -> str:
    """Where torchvision's ImageNet weights for the trial must be (checked before building)."""
    if config.dataset != "imagenet":
        raise UserError("--pretrained is only available for imagenet architectures; drop it")
    if config.norm != "batch":
        raise UserError(f"--pretrained weights exist only for batch norm, not norm "
                        f"{config.norm!r}: use --norm-mode batch or drop --pretrained")
    if num_classes != 1000:
        raise UserError(f"--pretrained weights have 1000 classes but the dataset has "
                        f"{num_classes}: drop --pretrained")
    import torchvision.models as tvm
    weights = tvm.get_model_weights(config.arch).IMAGENET1K_V1
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, os.path.basename(weights.url))
    if not os.path.isfile(path):
        raise UserError(f"pretrained weights for {config.arch} are not in the torch hub cache "
                        f"and cannot be downloaded here: place {os.path.basename(weights.url)} "
                        f"(from {weights.url}) in {folder}, or drop --pretrained")
    return path


def _load_pretrained(model: nn.Module, path: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # a truncated download or a file for another arch
        raise UserError(f"cannot load pretrained weights {path} ({type(err).__name__}): "
                        "replace the file or drop --pretrained") from None


def build_model(config: "TrialConfig", num_classes: int, input_size: int) -> nn.Module:
    """The trial's network with its normalizer, all parameters created and initialized.

    Layer norm's per-element affine depends on the input size, so one eval-mode forward pass
    (norms.materialize) creates it here, before any optimizer sees the parameters.
    """
    import norms
    from norms.plugins import PluginError
    pretrained = _pretrained_path(config, num_classes) if config.pretrained else None
    try:
        # a plugin by the import path it was planned with, never re-resolved from its name
        norm_layer = norms.norm_factory(config.norm_path or config.norm, alpha_fwd=config.afwd,
                                        alpha_bkw=config.abkw, ecm=config.ecm,
                                        gn_num_groups=config.gn_num_groups,
                                        impl=config.norm_impl)
    except ValueError as err:
        raise UserError(str(err)) from None
    try:
        if config.dataset == "imagenet":
            model = build_imagenet_resnet(config.arch, num_classes, norm_layer)
        else:
            model = build_cifar_resnet(config.depth, num_classes, norm_layer)
    except PluginError as err:
        raise UserError(str(err)) from None
    except ValueError as err:
        if config.norm != "group":
            raise
        # torch's GroupNorm refuses channel counts that the group count does not divide
        raise UserError(f"gn_num_groups {config.gn_num_groups} does not divide every layer's "
                        f"channel count ({err}): use a power of two such as 8 or 32") from None
    norms.materialize(model, torch.zeros(1, 3, input_size, input_size))
    init_norms(model)  # layer norm's per-element affine exists only now
    if pretrained:
        _load_pretrained(model, pretrained)
    return model
