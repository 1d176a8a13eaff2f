"""The typed, validated trial config that every launcher (CLI, Ray) hands to the trainer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from norms.modes import ECM_MODES, NORM_MODES
from trainers.errors import UserError

DATASETS = ("cifar10", "cifar100", "imagenet")
IMAGENET_ARCHS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d",
)
# "bias" exempts only normalization biases from weight decay: what the seed scripts'
# name filter actually did; "none" applies weight decay to every parameter.
NORM_WD_MODES = ("exempt", "bias", "none")

# Per-dataset defaults of the seed scripts (paper/original_cli.md).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar10": dict(arch="resnet", depth=20, epochs=250, batch_size=128,
                    lr_milestones=(100, 150, 200), weight_decay=2e-4,
                    afwd=1023 / 1024, abkw=127 / 128, gn_num_groups=8,
                    norm_weight_decay="none"),
    "cifar100": dict(arch="resnet", depth=20, epochs=250, batch_size=128,
                     lr_milestones=(100, 150, 200), weight_decay=2e-4,
                     afwd=511 / 512, abkw=15 / 16, gn_num_groups=8,
                     norm_weight_decay="none"),
    "imagenet": dict(arch="resnet18", depth=0, epochs=90, batch_size=256,
                     lr_milestones=(30, 60, 80, 90), weight_decay=1e-4,
                     afwd=0.999, abkw=0.99, gn_num_groups=32,
                     norm_weight_decay="exempt"),
}
# Batch size the lr and momentum of the recipe were tuned for (DESIGN.md rescaling rule).
BASE_BATCH_SIZE = {"cifar10": 128, "cifar100": 128, "imagenet": 256}


@dataclass(frozen=True)
class TrialConfig:
    """Everything that determines one training run; its hash is the trial_id."""

    dataset: str
    data_dir: str
    arch: str = "resnet"            # CIFAR: "resnet" (depth 6n+2); ImageNet: a torchvision name
    depth: int = 20                 # CIFAR ResNet depth; ignored on ImageNet
    epochs: int = 250
    batch_size: int = 128
    lr: float = 0.1
    lr_milestones: tuple[int, ...] = (100, 150, 200)
    lr_multiplier: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    norm: str = "batch"
    afwd: float = 1023 / 1024
    abkw: float = 127 / 128
    ecm: str = "ls"
    gn_num_groups: int = 8
    norm_weight_decay: str = "none"
    seed: int | None = None
    workers: int = 4
    pretrained: bool = False
    synthetic_image_size: int = 0   # >0: ImageNet-style folders with small images (tests, demo)
    device: str = "auto"            # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lr_milestones"] = list(self.lr_milestones)
        return out

    def replace(self, **changes: Any) -> "TrialConfig":
        return dataclasses.replace(self, **changes)


def config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(TrialConfig)}


def make_config(dataset: str, data_dir: str, **overrides: Any) -> TrialConfig:
    """Seed-script defaults for `dataset`, then `overrides`; unknown keys are errors."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    known = config_fields()
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise UserError(f"unknown trial setting(s) {', '.join(unknown)}: "
                        f"valid settings are {', '.join(sorted(known))}")
    values = dict(DATASET_DEFAULTS[dataset])
    values.update(overrides)
    if "lr_milestones" in values:
        values["lr_milestones"] = tuple(int(m) for m in values["lr_milestones"])
    return TrialConfig(dataset=dataset, data_dir=str(data_dir), **values)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise UserError(message)


def check_cifar_depth(depth: int) -> None:
    """The CIFAR ResNet has 6n+2 layers: 3 stages of n two-conv blocks, a stem and the fc."""
    _check(depth >= 8 and (depth - 2) % 6 == 0,
           f"depth {depth} is not 6n+2 (n >= 1): use e.g. 8, 14, 20, 32, 44, 56, 110")


def validate(c: TrialConfig) -> None:
    """Type and range checks; every message names the setting and what is allowed."""
    _check(c.dataset in DATASETS, f"dataset {c.dataset!r}: choose one of {', '.join(DATASETS)}")
    _check(c.norm in NORM_MODES, f"norm {c.norm!r}: choose one of {', '.join(NORM_MODES)}")
    _check(c.ecm in ECM_MODES, f"ecm {c.ecm!r}: choose one of {', '.join(ECM_MODES)}")
    _check(c.norm_weight_decay in NORM_WD_MODES,
           f"norm_weight_decay {c.norm_weight_decay!r}: choose one of {', '.join(NORM_WD_MODES)}")
    for name in ("depth", "epochs", "batch_size", "gn_num_groups", "workers",
                 "synthetic_image_size"):
        value = getattr(c, name)
        _check(isinstance(value, int) and not isinstance(value, bool),
               f"{name} must be an integer, got {value!r}")
    for name in ("lr", "lr_multiplier", "momentum", "weight_decay", "afwd", "abkw"):
        value = getattr(c, name)
        _check(isinstance(value, (int, float)) and not isinstance(value, bool),
               f"{name} must be a number, got {value!r}")
    _check(c.epochs >= 1, f"epochs must be at least 1, got {c.epochs}")
    _check(c.batch_size >= 1, f"batch_size must be at least 1, got {c.batch_size}")
    _check(c.lr > 0, f"lr must be positive, got {c.lr}")
    _check(0 <= c.momentum < 1, f"momentum must be in [0, 1), got {c.momentum}")
    _check(c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}")
    _check(0 < c.afwd < 1, f"afwd must be in (0, 1), e.g. 1023/1024; got {c.afwd}")
    _check(0 < c.abkw < 1, f"abkw must be in (0, 1), e.g. 127/128; got {c.abkw}")
    _check(c.gn_num_groups >= 1, f"gn_num_groups must be at least 1, got {c.gn_num_groups}")
    _check(c.workers >= 0, f"workers must be >= 0 (0 loads data in the main process), "
                           f"got {c.workers}")
    _check(c.synthetic_image_size >= 0, f"synthetic_image_size must be >= 0 (0: the real "
                                        f"224-pixel crops), got {c.synthetic_image_size}")
    _check(all(isinstance(m, int) and m >= 1 for m in c.lr_milestones),
           f"lr_milestones must be positive epoch numbers, got {list(c.lr_milestones)}")
    _check(c.seed is None or (isinstance(c.seed, int) and c.seed >= 0),
           f"seed must be a non-negative integer, got {c.seed!r}")
    if c.dataset == "imagenet":
        _check(c.arch in IMAGENET_ARCHS,
               f"arch {c.arch!r} for imagenet: choose one of {', '.join(IMAGENET_ARCHS)}")
    else:
        _check(c.arch == "resnet", f"arch {c.arch!r} for {c.dataset}: only 'resnet' "
               "(the CIFAR ResNet, sized by depth)")
        check_cifar_depth(c.depth)
