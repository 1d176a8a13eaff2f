"""The ranking of a decay-factor search: per (afwd, abkw), the median over seeds of each run's
best validation top-1, within one setting (the rest of the recipe) at a time."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.layout import ExperimentLayout
from orchestrator.plan.trial_id import setting_key
from orchestrator.report.results import read_results
from orchestrator.storage import location
from trainers.decay import dyadic_k, fraction_text

RANKING_COLUMNS = ["afwd", "abkw", "median_best_val_acc1", "runs", "stopped", "max_epoch"]
# A search's point is its two decay factors; everything else of the config is the setting.
POINT_KEYS = ("seed", "afwd", "abkw")


def trial_settings(trials) -> dict[str, str]:
    """trial_id -> setting key (the recipe without seed and decay factors) from trials.parquet."""
    out = {}
    if trials is None or "config_json" not in trials:
        return out
    for trial_id, raw in zip(trials["trial_id"], trials["config_json"]):
        try:
            out[str(trial_id)] = setting_key(json.loads(raw), ignore=POINT_KEYS)
        except (TypeError, json.JSONDecodeError):
            continue
    return out


def rank_configurations(metrics, trials=None, setting: str | None = None):
    """One row per (afwd, abkw): median over seeds of each run's best val_acc1, best first.

    `setting` (a key from `setting_key(config, ignore=POINT_KEYS)`) keeps only the runs of
    that recipe: a search whose settings changed never pools its old and new runs. A run
    stopped early by the scheduler still contributes the best accuracy it reached, which is
    what ASHA compared it on.
    """
    import pandas as pd

    empty = pd.DataFrame(columns=RANKING_COLUMNS)
    if metrics is None or len(metrics) == 0:
        return empty
    if setting is not None:
        settings = trial_settings(trials)
        metrics = metrics[metrics["trial_id"].astype(str).map(settings) == setting]
        if not len(metrics):
            return empty
    per_run = (metrics.groupby(["trial_id", "afwd", "abkw"], as_index=False)
               .agg(best_val_acc1=("val_acc1", "max"), last_epoch=("epoch", "max")))
    if trials is not None and "status" in trials:
        per_run = per_run.merge(trials[["trial_id", "status"]], on="trial_id", how="left")
    else:
        per_run["status"] = "completed"
    ranking = (per_run.groupby(["afwd", "abkw"], as_index=False)
               .agg(median_best_val_acc1=("best_val_acc1", "median"),
                    runs=("trial_id", "count"),
                    stopped=("status", lambda s: int((s == "stopped").sum())),
                    max_epoch=("last_epoch", "max")))
    return ranking.sort_values(["median_best_val_acc1", "max_epoch"],
                               ascending=[False, False], ignore_index=True)


def load_ranking(exp_dir: Path, setting: str | None = None):
    """rank_configurations over an experiment folder's Parquet files (empty when none yet)."""
    layout = ExperimentLayout(location(exp_dir))
    metrics = read_results(layout, "metrics")
    trials = read_results(layout, "trials")
    return rank_configurations(metrics, trials, setting)


def yaml_snippet(best: dict[str, float]) -> str:
    """The best pair as an online-norm cell to paste into an experiment of experiments.yaml."""
    return ("- norm: online\n"
            f"  afwd: {fraction_text(best['afwd'], exact=True)}\n"
            f"  abkw: {fraction_text(best['abkw'], exact=True)}\n"
            "  ecm: ls\n")


def dyadic_grid(ranking):
    """(afwd k's, abkw k's, accuracy grid with NaN where not run) over the whole k ranges,
    or None when some value is not 1 - 2^-k."""
    import numpy as np

    k_afwd = [dyadic_k(v) for v in ranking["afwd"]]
    k_abkw = [dyadic_k(v) for v in ranking["abkw"]]
    if None in k_afwd or None in k_abkw:
        return None
    rows = list(range(min(k_afwd), max(k_afwd) + 1))
    cols = list(range(min(k_abkw), max(k_abkw) + 1))
    grid = np.full((len(rows), len(cols)), np.nan)
    for ka, kb, value in zip(k_afwd, k_abkw, ranking["median_best_val_acc1"]):
        grid[rows.index(ka), cols.index(kb)] = value
    return rows, cols, grid
