"""The paper's reported ResNet results (paper_results.csv) and how our settings map onto them."""

from __future__ import annotations

import csv
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

PAPER_CSV = Path(__file__).with_name("paper_results.csv")

DATASET_NAMES = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "imagenet": "ImageNet"}

# The decay factors the paper used for Online Norm on each dataset; an online setting is
# compared with the paper's row only when it ran with these (and layer scaling).
PAPER_ONLINE_DECAYS = {
    "cifar10": (1023 / 1024, 127 / 128),
    "cifar100": (511 / 512, 15 / 16),
    "imagenet": (0.999, 0.99),
}
PAPER_ONLINE_ECM = "ls"
# Group counts the paper used (seed scripts' defaults).
PAPER_GN_GROUPS = {"cifar10": 8, "cifar100": 8, "imagenet": 32}


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


def _close(a: Any, b: float) -> bool:
    try:
        return math.isclose(float(a), b, rel_tol=0, abs_tol=1e-6)  # float32 0.999 is off by 1e-8
    except (TypeError, ValueError):
        return False


def paper_entry(metric: str, dataset: str, arch: str, depth: Any, norm: str,
                options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The paper's row for this setting, or None when the paper has no comparable row.

    `metric` is 'accuracy' or 'loss'; `options` holds the setting's norm options (afwd,
    abkw, ecm for online; gn_num_groups for group). Options we do not know (absent keys)
    are assumed to match.
    """
    options = options or {}
    if norm == "online":
        decays = PAPER_ONLINE_DECAYS.get(dataset)
        if decays is None:
            return None
        if not (_close(options.get("afwd", decays[0]), decays[0])
                and _close(options.get("abkw", decays[1]), decays[1])):
            return None
        if options.get("ecm", PAPER_ONLINE_ECM) != PAPER_ONLINE_ECM:
            return None
    if norm == "group" and "gn_num_groups" in options:
        if options["gn_num_groups"] != PAPER_GN_GROUPS.get(dataset):
            return None
    want = (DATASET_NAMES.get(dataset), network_name(arch, depth), metric, norm)
    for row in load_paper():
        if (row["dataset"], row["network"], row["metric"], row["norm"]) == want:
            return row
    return None
