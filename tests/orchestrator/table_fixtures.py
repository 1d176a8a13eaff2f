"""Hand-made results folders (metrics.parquet, trials.parquet) with known curves.

Shared by the table, plot and CLI tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

NAN = math.nan
C10 = dict(afwd=1023 / 1024, abkw=127 / 128)
C100 = dict(afwd=511 / 512, abkw=15 / 16)

# (trial_id, dataset, norm, options, status, val_acc1 per epoch, val_loss per epoch)
RUNS = [
    # CIFAR-10 online, paper decays, 3 runs: the median curve peaks at epoch 3 (76) while
    # each run peaks elsewhere (epochs 2, 4, 1) at 90, 90, 95.
    ("on1", "cifar10", "online", C10, "completed", [10, 90, 75, 20], [2.0, 0.5, 0.9, 1.2]),
    ("on2", "cifar10", "online", C10, "completed", [10, 20, 76, 90], [2.0, 0.7, 0.8, 0.4]),
    ("on3", "cifar10", "online", C10, "completed", [95, 30, 77, 30], [2.2, 0.6, 1.0, 1.1]),
    # CIFAR-10 batch, 2 runs (median = mean of the middle two); loss ties at epochs 3 and 4.
    ("bn1", "cifar10", "batch", {}, "completed", [20, 40, 60, 50], [1.5, 1.0, 0.75, 0.875]),
    ("bn2", "cifar10", "batch", {}, "stopped", [30, 50, 64, 80], [1.25, 1.25, 0.625, 0.5]),
    # still running: left out unless include_running
    ("bn3", "cifar10", "batch", {}, "running", [0, 0, 0, 99], [9.0, 9.0, 9.0, 0.25]),
    # CIFAR-10 layer, one run
    ("ln1", "cifar10", "layer", {}, "completed", [30, 55, 50, 52], [1.0, 0.9, 0.95, 0.8]),
    # CIFAR-10 online with decays the paper did not use: no paper columns
    ("on9", "cifar10", "online", dict(afwd=0.99, abkw=0.9), "completed",
     [40, 41, 42, 43], [1.0, 0.9, 0.8, 0.7]),
    # CIFAR-100 online, paper decays; on6 diverges at epoch 2
    ("c1", "cifar100", "online", C100, "completed", [20, 30, 40, 50], [4.0, 3.0, 2.5, 2.0]),
    ("c2", "cifar100", "online", C100, "completed", [22, 32, 42, 52], [3.8, 2.8, 2.4, 2.25]),
    ("c3", "cifar100", "online", C100, "diverged", [25, NAN], [3.5, NAN]),
]
PENDING = ("bn4", "cifar10", "batch", {}, "pending")  # in trials.parquet, no metrics yet
MILESTONES = [2, 3]


def config(dataset: str, norm: str, options: dict, **extra) -> dict:
    cfg = dict(dataset=dataset, data_dir="/data", arch="resnet", depth=20, epochs=4,
               batch_size=128, lr=0.1, lr_milestones=MILESTONES, lr_multiplier=0.1,
               momentum=0.9, weight_decay=2e-4, norm=norm, afwd=0.999, abkw=0.99, ecm="ls",
               gn_num_groups=8, norm_weight_decay="none", seed=0, workers=4, device="cpu")
    cfg.update(options)
    cfg.update(extra)
    return cfg


def write_results(folder: Path, runs=RUNS, with_trials: bool = True,
                  extra_config: dict | None = None) -> Path:
    """Write metrics.parquet (+ trials.parquet) for `runs` into `folder`; returns folder."""
    folder.mkdir(parents=True, exist_ok=True)
    extra_config = extra_config or {}
    rows, trials = [], []
    for seed, (tid, dataset, norm, opts, status, acc, loss) in enumerate(runs):
        cfg = config(dataset, norm, opts, seed=seed, **extra_config.get(tid, {}))
        for i, (a, lo) in enumerate(zip(acc, loss)):
            epoch = i + 1
            rows.append(dict(
                experiment="toy", trial_id=tid, dataset=dataset, arch="resnet", depth=20,
                norm=norm, afwd=cfg["afwd"], abkw=cfg["abkw"], ecm="ls", seed=seed,
                epoch=epoch, lr=0.1 * 0.1 ** sum(epoch > m for m in MILESTONES),
                train_loss=lo * 0.5, train_acc1=a, train_acc5=a, val_loss=lo, val_acc1=a,
                val_acc5=a, epoch_time_s=1.0, images_per_s=100.0))
        trials.append(dict(experiment="toy", trial_id=tid, dataset=dataset, norm=norm,
                           status=status, epochs=4, epochs_done=len(acc),
                           config_json=json.dumps(cfg)))
    tid, dataset, norm, opts, status = PENDING
    trials.append(dict(experiment="toy", trial_id=tid, dataset=dataset, norm=norm,
                       status=status, epochs=4, epochs_done=0,
                       config_json=json.dumps(config(dataset, norm, opts))))
    pd.DataFrame(rows).to_parquet(folder / "metrics.parquet", index=False)
    if with_trials:
        pd.DataFrame(trials).to_parquet(folder / "trials.parquet", index=False)
    return folder
