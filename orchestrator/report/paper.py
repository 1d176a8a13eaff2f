"""The paper's reported ResNet results (paper_results.csv) and how our settings map onto them."""

from __future__ import annotations

import csv
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from norms.modes import options_of

PAPER_CSV = Path(__file__).with_name("paper_results.csv")

DATASET_NAMES = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "imagenet": "ImageNet"}

# The normalizer options the paper ran with on each dataset (its decay factors, layer scaling,
# the seed scripts' group counts); a setting is compared with the paper's row only when every
# option its kind takes (norms.modes) matches these.
PAPER_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "cifar10": {"online": {"afwd": 1023 / 1024, "abkw": 127 / 128, "ecm": "ls"},
                "group": {"gn_num_groups": 8}},
    "cifar100": {"online": {"afwd": 511 / 512, "abkw": 15 / 16, "ecm": "ls"},
                 "group": {"gn_num_groups": 8}},
    "imagenet": {"online": {"afwd": 0.999, "abkw": 0.99, "ecm": "ls"},
                 "group": {"gn_num_groups": 32}},
}


def network_name(arch: str, depth: Any) -> str:
    """'resnet' + depth 20 -> 'ResNet20'; torchvision 'resnet50' -> 'ResNet50'."""
    arch = str(arch)
    if arch == "resnet":
        return f"ResNet{int(depth)}"
    if arch.startswith("resnext"):
        return "ResNeXt" + arch[len("resnext"):]
    if arch.startswith("resnet"):
        return "ResNet" + arch[len("resnet"):]
    return arch


def _float_or_none(text: str) -> float | None:
    return float(text) if text.strip() else None


@lru_cache(maxsize=1)
def load_paper() -> tuple[dict[str, Any], ...]:
    """Every row of paper_results.csv with numbers parsed (empty cells -> None)."""
    with PAPER_CSV.open(newline="") as fh:
        rows = []
        for rec in csv.DictReader(fh):
            row: dict[str, Any] = {k: rec[k] for k in ("dataset", "network", "metric", "norm")}
            for key in ("best_epoch", "total_epochs", "runs"):
                row[key] = int(rec[key])
            for key in ("median", "min", "max", "mean", "std"):
                row[key] = _float_or_none(rec[key])
            rows.append(row)
    return tuple(rows)


def _same(ours: Any, paper: Any) -> bool:
    if isinstance(paper, float):
        try:   # float32 0.999 is off by 1e-8
            return math.isclose(float(ours), paper, rel_tol=0, abs_tol=1e-6)
        except (TypeError, ValueError):
            return False
    return ours == paper


def paper_entry(metric: str, dataset: str, arch: str, depth: Any, norm: str,
                options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The paper's row for this setting, or None when the paper has no comparable row.

    `metric` is 'accuracy' or 'loss'; `options` holds the setting's norm options (afwd,
    abkw, ecm for online; gn_num_groups for group). Options we do not know (absent keys)
    are assumed to match.
    """
    options = options or {}
    paper_options = PAPER_OPTIONS.get(dataset, {}).get(norm, {})
    for key in options_of(norm):
        if key in options and key in paper_options and not _same(options[key],
                                                                  paper_options[key]):
            return None
    want = (DATASET_NAMES.get(dataset), network_name(arch, depth), metric, norm)
    for row in load_paper():
        if (row["dataset"], row["network"], row["metric"], row["norm"]) == want:
            return row
    return None
