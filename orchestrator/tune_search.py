"""Running a decay-factor search: fixed lists (grid, random) in one go, Optuna batch by batch.

Optuna proposes points from the results so far (ask/tell), a batch of `max_concurrent`
configurations at a time, each batch run through the same `run_trials` as `onorm run`. On a
re-run, the study is rebuilt from what trials.parquet recorded, so finished configurations
are neither retrained nor forgotten and unfinished ones resume first.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from orchestrator.recorder import SEARCH_DONE_STATUSES
from orchestrator.runner import RunSummary, run_trials
from orchestrator.tune_experiment import make_scheduler, point_trials, space_of
from orchestrator.tuning import load_ranking
from trainers.decay import dyadic, dyadic_k
from trainers.errors import UserError

# A configuration stopped early by the scheduler is finished for the search's purposes.


def run_points(experiment, points, results_dir: Path, options: dict[str, Any]) -> RunSummary:
    unique = {(p["afwd"], p["abkw"]): p for p in points}   # a searcher may propose a point twice
    points = list(unique.values())
    trials = point_trials(experiment, points, data_dir=options.get("data_dir"),
                          cpu_only=options.get("cpu_only", False))
    return run_trials(experiment.name, trials, results_dir, address=options.get("address"),
                      max_concurrent=options.get("max_concurrent"),
                      scheduler=make_scheduler(experiment), metric="val_acc1", mode="max",
                      max_failures=experiment.max_failures, skip_statuses=SEARCH_DONE_STATUSES)


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("searcher optuna needs the optional package optuna (>= 3): install it "
                        "with `pip install 'onorm[optuna]'`, or use `searcher: random`") from None
    return optuna


def optuna_distributions(experiment):
    optuna = import_optuna()
    out = {}
    for key, axis in space_of(experiment).items():
        if axis.kind == "dyadic":   # k of a = 1 - 2^-k
            out[f"k_{key}"] = optuna.distributions.IntDistribution(int(axis.low), int(axis.high))
        else:                       # 1 - a, log-uniform
            out[f"one_minus_{key}"] = optuna.distributions.FloatDistribution(
                axis.low, axis.high, log=True)
    return out


def point_from_params(params: dict[str, Any]) -> dict[str, float]:
    point = {}
    for key in ("afwd", "abkw"):
        point[key] = (dyadic(params[f"k_{key}"]) if f"k_{key}" in params
                      else 1.0 - params[f"one_minus_{key}"])
    return point


def params_from_point(point: dict[str, float], distributions) -> dict[str, Any] | None:
    """Optuna's parameters for a recorded point; None when a dyadic axis cannot hold it."""
    params = {}
    for key in ("afwd", "abkw"):
        if f"k_{key}" in distributions:
            k = dyadic_k(point[key])
            if k is None:
                return None
            params[f"k_{key}"] = k
        else:
            params[f"one_minus_{key}"] = 1.0 - point[key]
    return params


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def recorded_points(results_dir: Path, experiment) -> tuple[list, list]:
    """(finished, unfinished) configurations recorded for this experiment, in trial order."""
    import pandas as pd

    path = results_dir / experiment.name / "trials.parquet"
    if not path.exists():
        return [], []
    trials = pd.read_parquet(path)
    finished, unfinished = [], []
    for (afwd, abkw), rows in trials.groupby(["afwd", "abkw"], sort=False):
        point = {"afwd": float(afwd), "abkw": float(abkw)}
        done = rows["status"].isin(SEARCH_DONE_STATUSES).all()
        (finished if done else unfinished).append(point)
    return finished, unfinished


def config_scores(results_dir: Path, experiment) -> dict[tuple[float, float], float]:
    """(afwd, abkw) -> median over seeds of best val top-1, from the Parquet files."""
    ranking = load_ranking(results_dir / experiment.name)
    return {(r.afwd, r.abkw): float(r.median_best_val_acc1) for r in ranking.itertuples()}


def run_optuna(experiment, results_dir: Path, options: dict[str, Any]) -> list[RunSummary]:
    """Ask/tell over batches until num_samples configurations have run."""
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = optuna_distributions(experiment)
    extra = experiment.extra
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=extra["search_seed"]))
    finished, unfinished = recorded_points(results_dir, experiment)
    scores = config_scores(results_dir, experiment)
    for point in finished:
        # NaN (every seed diverged) is a failed trial to Optuna, which refuses NaN values
        value = _finite(scores.get((point["afwd"], point["abkw"])))
        params = params_from_point(point, distributions)
        if params is None:
            continue   # recorded under a search space that has since changed
        try:
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions=distributions, value=value,
                state=(optuna.trial.TrialState.COMPLETE if value is not None
                       else optuna.trial.TrialState.FAIL)))
        except ValueError:
            continue   # outside the space's current bounds: it still counts as run
    batch_size = options.get("max_concurrent") or 2
    remaining = extra["num_samples"] - len(finished)
    summaries = []
    pending = unfinished[:remaining]   # resume interrupted configurations first
    while remaining > 0:
        asked = [study.ask(distributions)
                 for _ in range(max(0, min(batch_size, remaining) - len(pending)))]
        batch = pending + [point_from_params(t.params) for t in asked]
        pending = []
        summaries.append(run_points(experiment, batch, results_dir, options))
        scores = config_scores(results_dir, experiment)
        for trial, point in zip(asked, batch[len(batch) - len(asked):]):
            value = _finite(scores.get((point["afwd"], point["abkw"])))
            if value is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, value)
        remaining -= len(batch)
        if summaries[-1].exit_code:
            break   # a configuration failed for good: stop asking, report what ran
    return summaries
