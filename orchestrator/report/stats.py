"""The paper's statistic over Parquet results: settings, median curves, best epoch, spread.

The paper's definitions (docs/results.md, "The table"): for each setting, the *median curve*
is, at every epoch, the median over runs of the metric; the *best epoch* is where that curve is best
(highest val_acc1, lowest val_loss; ties go to the earliest epoch); at the best epoch we
report median, min, max, mean and std over runs, and the number of runs.

Decisions the paper leaves open, taken here:
- std is the population standard deviation (ddof=0, numpy's default). The paper's rounded
  numbers fit both ddof=0 and ddof=1 (e.g. CIFAR-10 online: 5 runs, median 92.3, min 91.8,
  max 92.3, mean 92.1, std 0.20 admits either), but ddof=0 fits more of the value sets
  consistent with that row, and np.std's default is what analysis code written with numpy
  most plausibly used.
- Runs shorter than others (stopped early, or still running with --include-running): at
  each epoch the median is over the runs that reached it.
- Diverged runs count as runs. From the epoch their loss became NaN/inf to the last epoch
  of their setting they score infinite loss and chance-level accuracy (100/classes percent,
  where the recorded accuracy is not finite). Dropping them instead would make the median
  over survivors look better than the setting is; the paper uses the median precisely so
  that such outliers do not swamp it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from norms.modes import ALL_KIND_OPTIONS, options_of
from orchestrator.layout import IN_PROGRESS_STATUSES, ExperimentLayout
from orchestrator.plan.trial_id import setting_values
from orchestrator.report.results import read_results
from orchestrator.storage import location
from trainers.decay import fraction_text
from trainers.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

DDOF = 0
METRIC_COLUMN = {"accuracy": "val_acc1", "loss": "val_loss"}
HIGHER_IS_BETTER = {"val_acc1": True, "val_acc5": True, "train_acc1": True, "train_acc5": True,
                    "val_loss": False, "train_loss": False}

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
DATASET_ORDER = ("cifar10", "cifar100", "imagenet")
NORM_ORDER = ("online", "batch", "layer", "instance", "group", "none")

IDENTITY = ("dataset", "arch", "depth", "norm")
LOSS_COLUMNS = ("train_loss", "val_loss")
ACC_COLUMNS = ("train_acc1", "train_acc5", "val_acc1", "val_acc5")


@dataclass
class Setting:
    """One row of the table: every run of the same recipe, differing only in seed."""

    key: str
    dataset: str
    arch: str
    depth: int
    norm: str
    options: dict[str, Any]        # the norm's own options (afwd, abkw, ecm / gn_num_groups)
    recipe: dict[str, Any]         # every other setting-defining config field
    trial_ids: list[str] = field(default_factory=list)
    diverged: set[str] = field(default_factory=set)
    lr_milestones: tuple[int, ...] = ()
    shown_recipe: tuple[str, ...] = ()   # recipe fields that differ between settings

    @property
    def label(self) -> str:
        parts = [f"{k}={_fmt_option(k, v)}" for k, v in self.options.items()]
        parts += [f"{k}={_fmt_option(k, self.recipe.get(k))}" for k in self.shown_recipe]
        return self.norm + (f" ({', '.join(parts)})" if parts else "")

    @property
    def option_text(self) -> str:
        return self.label[len(self.norm):].strip().strip("()")


@dataclass
class Runs:
    """The runs a report covers, their settings, and what was left out and why."""

    experiment: str
    metrics: "pd.DataFrame"          # kept runs only, column `setting` added, divergence filled
    settings: dict[str, Setting]     # in display order
    excluded: dict[str, int]         # status -> runs left out
    notes: list[str]


@dataclass
class Summary:
    """The paper's statistic for one setting and one metric."""

    setting: Setting
    metric: str                      # 'accuracy' | 'loss'
    best_epoch: int
    epochs: int                      # last epoch any run of the setting reached
    median: float
    min: float | None                # None with a single run (the paper's N/A)
    max: float | None
    mean: float
    std: float | None
    runs: int
    diverged: int


def _fmt_option(key: str, value: Any) -> str:
    if key in ("afwd", "abkw") and isinstance(value, (int, float)) and 0 < value < 1:
        # 1023/1024 reads better than 0.9990234375 (also after float32); 0.999 stays 0.999
        return fraction_text(value, tolerance=1e-6)
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def load_runs(exp_dir: Path, include_running: bool = False) -> Runs:
    """Read metrics.parquet (and trials.parquet if present) and group runs into settings."""
    import pandas as pd

    layout = ExperimentLayout(location(exp_dir))
    metrics_path = layout.metrics
    metrics = read_results(layout, "metrics")
    if metrics is None:
        raise UserError(f"{metrics_path} not found: run the experiment first "
                        "(onorm run NAME) or point at a folder holding metrics.parquet")
    for col in ("trial_id", "epoch"):
        if col not in metrics.columns and not len(metrics):
            metrics[col] = pd.Series([], dtype="int64" if col == "epoch" else object)
        elif col not in metrics.columns:
            raise UserError(f"{metrics_path} has no {col!r} column: it is not an onorm "
                            "metrics file")
    metrics = metrics.drop_duplicates(["trial_id", "epoch"], keep="last")
    metrics["epoch"] = metrics["epoch"].astype("int64")
    notes: list[str] = []
    names = (metrics["experiment"].dropna().astype(str) if "experiment" in metrics.columns
             else [])
    experiment = next((n for n in names if n), layout.dir.resolve().name)

    trials = read_results(layout, "trials")
    status: dict[str, str] = {}
    configs: dict[str, dict[str, Any]] = {}
    excluded: dict[str, int] = {}
    if trials is None:
        notes.append("trials.parquet not found: every run is treated as completed.")
    else:
        trials = trials.drop_duplicates("trial_id", keep="last")
        for rec in trials.to_dict("records"):
            tid = str(rec["trial_id"])
            status[tid] = str(rec.get("status") or "completed")
            raw = rec.get("config_json")
            if isinstance(raw, str) and raw:
                try:
                    configs[tid] = json.loads(raw)
                except json.JSONDecodeError:
                    pass
        for st in status.values():
            if st in IN_PROGRESS_STATUSES:
                excluded[st] = excluded.get(st, 0) + 1
        unknown = sorted(set(metrics["trial_id"].astype(str)) - set(status))
        if unknown:
            notes.append(f"{len(unknown)} run(s) missing from trials.parquet are treated "
                         "as completed.")

    metrics["trial_id"] = metrics["trial_id"].astype(str)
    if not include_running:
        run_status = metrics["trial_id"].map(lambda t: status.get(t, "completed"))
        metrics = metrics[~run_status.isin(IN_PROGRESS_STATUSES)]
    else:
        if excluded:
            notes.append(f"Included {sum(excluded.values())} run(s) not finished "
                         f"({_count_text(excluded)}) because of --include-running.")
        excluded = {}
    settings = _group_settings(metrics, configs)
    metrics = metrics.assign(setting=metrics["trial_id"].map(
        {t: s.key for s in settings.values() for t in s.trial_ids}))
    metrics = _fill_diverged(metrics, settings, status)
    if any(s.diverged for s in settings.values()):
        notes.append("† diverged runs count as runs; from divergence on they score "
                     "infinite loss and chance accuracy.")
    return Runs(experiment, metrics.reset_index(drop=True), settings, excluded, notes)


def _count_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {st}" for st, n in sorted(counts.items()))


def excluded_note(runs: Runs) -> str | None:
    if not runs.excluded:
        return None
    total = sum(runs.excluded.values())
    return (f"{total} run(s) left out ({_count_text(runs.excluded)}); "
            "pass --include-running to include them.")


def _trial_config(row: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    merged = {k: row[k] for k in ("dataset", "arch", "depth", "norm", "afwd", "abkw", "ecm")
              if k in row and not _is_missing(row[k])}
    merged.update(config)
    return merged


def _is_missing(value: Any) -> bool:
    try:
        return value is None or (isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


def _plain(value: Any) -> Any:
    """numpy scalars -> Python ones, so settings hash and print the same from any source."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    return value


def _group_settings(metrics: "pd.DataFrame", configs: dict[str, dict[str, Any]]
                    ) -> dict[str, Setting]:
    first = metrics.groupby("trial_id", sort=False).first().reset_index()
    settings: dict[str, Setting] = {}
    for row in first.to_dict("records"):
        tid = str(row["trial_id"])
        cfg = {k: _plain(v) for k, v in _trial_config(row, configs.get(tid, {})).items()}
        norm = str(cfg.get("norm", "unknown"))
        arch = str(cfg.get("arch", "resnet"))
        depth = int(cfg.get("depth", 0) or 0) if arch == "resnet" else 0
        options = {k: cfg[k] for k in options_of(norm) if k in cfg}
        recipe = {k: v for k, v in setting_values(cfg).items()
                  if k not in IDENTITY and k not in ALL_KIND_OPTIONS}
        ident = dict(dataset=str(cfg.get("dataset", "")), arch=arch, depth=depth, norm=norm)
        # a plugin is the same setting under either spelling (its name, or its import path)
        what = {**ident, "norm": str(cfg.get("norm_path") or norm)}
        key = json.dumps([what, options, recipe], sort_keys=True, default=str)
        if key not in settings:
            milestones = tuple(int(m) for m in cfg.get("lr_milestones") or ())
            settings[key] = Setting(key, options=options, recipe=recipe,
                                    lr_milestones=milestones, **ident)
        settings[key].trial_ids.append(tid)
    _mark_shown_recipe(list(settings.values()))
    return dict(sorted(settings.items(), key=lambda kv: _order(kv[1])))


def _mark_shown_recipe(settings: list[Setting]) -> None:
    """Show in labels only the recipe fields that differ between settings of a dataset."""
    for dataset in {s.dataset for s in settings}:
        group = [s for s in settings if s.dataset == dataset]
        keys = sorted({k for s in group for k in s.recipe})
        differing = tuple(k for k in keys if len({json.dumps(s.recipe.get(k), default=str)
                                                  for s in group}) > 1)
        for s in group:
            s.shown_recipe = differing


def _order(s: Setting) -> tuple:
    ds = DATASET_ORDER.index(s.dataset) if s.dataset in DATASET_ORDER else len(DATASET_ORDER)
    nm = NORM_ORDER.index(s.norm) if s.norm in NORM_ORDER else len(NORM_ORDER)
    return (ds, s.dataset, s.arch, s.depth, nm, s.norm, s.label)


def _fill_diverged(metrics: "pd.DataFrame", settings: dict[str, Setting],
                   status: dict[str, str]) -> "pd.DataFrame":
    import numpy as np
    import pandas as pd

    loss_cols = [c for c in LOSS_COLUMNS if c in metrics.columns]
    acc_cols = [c for c in ACC_COLUMNS if c in metrics.columns]
    if not len(metrics):
        return metrics
    bad = ~np.isfinite(metrics[loss_cols].to_numpy(dtype=float)).all(axis=1) \
        if loss_cols else np.zeros(len(metrics), dtype=bool)
    nonfinite_trials = set(metrics.loc[bad, "trial_id"])
    last_epoch = metrics.groupby("setting")["epoch"].max().to_dict()
    extra_rows = []
    metrics = metrics.copy()
    for s in settings.values():
        for tid in s.trial_ids:
            if status.get(tid) != "diverged" and tid not in nonfinite_trials:
                continue
            s.diverged.add(tid)
            chance = 100.0 / NUM_CLASSES[s.dataset] if s.dataset in NUM_CLASSES else 0.0
            mine = metrics["trial_id"] == tid
            for col in loss_cols:
                vals = metrics.loc[mine, col].astype(float)
                metrics.loc[mine, col] = vals.where(np.isfinite(vals), np.inf)
            for col in acc_cols:
                top = 5 if col.endswith("acc5") else 1
                vals = metrics.loc[mine, col].astype(float)
                metrics.loc[mine, col] = vals.where(np.isfinite(vals), min(100.0, top * chance))
            template = metrics[mine].iloc[-1].to_dict()
            for epoch in range(int(metrics.loc[mine, "epoch"].max()) + 1,
                               int(last_epoch[s.key]) + 1):
                row = dict(template, epoch=epoch)
                for col in metrics.columns:
                    if col in loss_cols:
                        row[col] = np.inf
                    elif col in acc_cols:
                        row[col] = min(100.0, (5 if col.endswith("acc5") else 1) * chance)
                    elif col not in ("experiment", "trial_id", "setting", "dataset", "arch",
                                     "depth", "norm", "afwd", "abkw", "ecm", "seed", "epoch"):
                        row[col] = np.nan
                extra_rows.append(row)
    if extra_rows:
        metrics = pd.concat([metrics, pd.DataFrame(extra_rows)], ignore_index=True)
    return metrics.sort_values(["setting", "trial_id", "epoch"], kind="stable")


def curve(runs: Runs, setting_key: str, column: str) -> "pd.DataFrame":
    """Per-epoch median, min and max over runs of `column`, and how many runs reached it.

    Columns: epoch, median, min, max, runs. Epochs where no run has a value are dropped.
    """
    import numpy as np
    import pandas as pd

    df = runs.metrics[runs.metrics["setting"] == setting_key]
    empty = pd.DataFrame({"epoch": [], "median": [], "min": [], "max": [], "runs": []})
    if column not in df.columns or not len(df):
        return empty
    wide = df.pivot(index="epoch", columns="trial_id", values=column).sort_index()
    arr = wide.to_numpy(dtype=float)
    present = ~np.isnan(arr)
    counts = present.sum(axis=1)
    arr, counts, epochs = arr[counts > 0], counts[counts > 0], wide.index[counts > 0]
    if not len(arr):
        return empty
    with np.errstate(invalid="ignore"):
        return pd.DataFrame({"epoch": epochs.astype(int), "median": np.nanmedian(arr, axis=1),
                             "min": np.nanmin(arr, axis=1), "max": np.nanmax(arr, axis=1),
                             "runs": counts.astype(int)}).reset_index(drop=True)


def best_epoch(median_curve: "pd.DataFrame", column: str) -> int:
    """Epoch where the median curve is best; the earliest on ties."""
    import numpy as np

    values = median_curve["median"].to_numpy(dtype=float)
    idx = int(np.argmax(values) if HIGHER_IS_BETTER[column] else np.argmin(values))
    return int(median_curve["epoch"].iloc[idx])


def summarize(runs: Runs, metric: str) -> list[Summary]:
    """The paper's statistic for every setting; settings with no value are skipped."""
    import numpy as np

    column = METRIC_COLUMN[metric]
    out = []
    for key, setting in runs.settings.items():
        med_curve = curve(runs, key, column)
        if not len(med_curve):
            continue
        epoch = best_epoch(med_curve, column)
        df = runs.metrics[(runs.metrics["setting"] == key) & (runs.metrics["epoch"] == epoch)]
        df = df[df[column].notna()]
        values = df[column].to_numpy(dtype=float)
        n = len(values)
        with np.errstate(invalid="ignore", over="ignore"):
            std = float(np.std(values, ddof=DDOF))
        if np.isinf(values).any():
            std = math.inf  # an infinite loss makes the spread infinite, not undefined
        out.append(Summary(
            setting=setting, metric=metric, best_epoch=epoch,
            epochs=int(med_curve["epoch"].max()), median=float(np.median(values)),
            min=float(values.min()) if n > 1 else None,
            max=float(values.max()) if n > 1 else None,
            mean=float(np.mean(values)), std=std if n > 1 else None, runs=n,
            diverged=int(df["trial_id"].isin(setting.diverged).sum())))
    return out
