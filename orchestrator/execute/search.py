"""Running a decay-factor search: fixed lists (grid, random) in one go, Optuna batch by batch.

Optuna proposes points from the results so far (ask/tell), a batch of `max_concurrent`
configurations at a time, each batch run through the same `run_trials` as `onorm run`. On a
re-run, the study is rebuilt from what trials.parquet recorded for the search's current
setting (its recipe besides afwd, abkw and seed), so finished configurations are neither
retrained nor forgotten, unfinished ones resume first, and runs of an earlier setting never
feed Optuna.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from orchestrator.execute.runner import RunSummary, reconcile_folder, run_trials
from orchestrator.layout import SEARCH_DONE_STATUSES, ExperimentLayout
from orchestrator.plan.trial_id import setting_key
from orchestrator.plan.tune_kind import point_trials, space_of
from orchestrator.report.ranking import POINT_KEYS, load_ranking
from orchestrator.report.results import read_results
from trainers.config import make_config
from trainers.decay import dyadic, dyadic_k
from trainers.errors import UserError

# Optuna may propose points that already ran (a dyadic space is small); after this many
# proposals in a row that bring nothing new, the space is taken as exhausted.
MAX_REPEATED_PROPOSALS = 200


def make_scheduler(experiment):
    """ASHA on validation top-1, by epoch (a resumed trial's training_iteration restarts)."""
    spec = experiment.extra["scheduler"]
    if spec["type"] == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    epochs = make_config(experiment.dataset, ".", **experiment.settings).epochs
    return ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=spec["grace_period"],
                         reduction_factor=spec["reduction_factor"])


def search_setting(experiment) -> str:
    """The setting key every configuration of this search shares (see report.ranking)."""
    probe = point_trials(experiment, [{"afwd": 0.5, "abkw": 0.5}])[0]
    return setting_key(probe.recorded_config(), ignore=POINT_KEYS)


def run_points(experiment, points, results_root: Path, options: dict[str, Any]) -> RunSummary:
    unique = {(p["afwd"], p["abkw"]): p for p in points}   # a searcher may propose a point twice
    points = list(unique.values())
    trials = point_trials(experiment, points, data_dir=options.get("data_dir"),
                          cpu_only=options.get("cpu_only", False))
    if options.get("select"):   # --only
        trials = options["select"](trials)
    return run_trials(experiment.name, trials, results_root, address=options.get("address"),
                      max_concurrent=options.get("max_concurrent"),
                      scheduler=make_scheduler(experiment), metric="val_acc1", mode="max",
                      max_failures=experiment.max_failures, skip_statuses=SEARCH_DONE_STATUSES,
                      on_start=options.get("on_start"), log=options.get("log", ()))


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


def recorded_points(results_root: Path, experiment) -> tuple[list, list]:
    """(finished, unfinished) configurations recorded for this search's setting, in trial
    order."""
    layout = ExperimentLayout.of(results_root, experiment.name)
    trials = read_results(layout, "trials")
    if trials is None:
        return [], []
    setting = search_setting(experiment)
    mine = trials["config_json"].map(lambda raw: setting_key(json.loads(raw), POINT_KEYS)
                                     == setting)
    finished, unfinished = [], []
    for (afwd, abkw), rows in trials[mine].groupby(["afwd", "abkw"], sort=False):
        point = {"afwd": float(afwd), "abkw": float(abkw)}
        done = rows["status"].isin(SEARCH_DONE_STATUSES).all()
        (finished if done else unfinished).append(point)
    return finished, unfinished


def config_scores(results_root: Path, experiment) -> dict[tuple[float, float], float]:
    """(afwd, abkw) -> median over seeds of best val top-1 within this search's setting."""
    ranking = load_ranking(ExperimentLayout.of(results_root, experiment.name).dir,
                           search_setting(experiment))
    return {(r.afwd, r.abkw): float(r.median_best_val_acc1) for r in ranking.itertuples()}


def _tell(optuna, study, trial, value: float | None) -> None:
    # NaN (every seed diverged) is a failed trial to Optuna, which refuses NaN values
    if value is None:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, value)


def _add_recorded(optuna, study, distributions, point: dict[str, float],
                  value: float | None) -> None:
    """A configuration that ran outside this study (an earlier run) joins it with its score."""
    params = params_from_point(point, distributions)
    if params is None:
        return   # recorded under a search space that has since changed
    try:
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, value=value,
            state=(optuna.trial.TrialState.COMPLETE if value is not None
                   else optuna.trial.TrialState.FAIL)))
    except ValueError:
        pass   # outside the space's current bounds: it still counts as run


def run_optuna(experiment, results_root: Path, options: dict[str, Any]) -> list[RunSummary]:
    """Ask/tell over batches until num_samples distinct configurations have run.

    A proposal that already ran is answered at once with its known score, and one already in
    the batch gets that batch's score: neither counts against the budget.
    """
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = optuna_distributions(experiment)
    extra = experiment.extra
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=extra["search_seed"]))
    # the record Optuna is rebuilt from must first agree with the trial store
    reconcile_folder(ExperimentLayout.of(results_root, experiment.name), SEARCH_DONE_STATUSES)
    finished, unfinished = recorded_points(results_root, experiment)
    scores = config_scores(results_root, experiment)
    done = {(p["afwd"], p["abkw"]) for p in finished}
    for point in finished:
        _add_recorded(optuna, study, distributions, point,
                      _finite(scores.get((point["afwd"], point["abkw"]))))
    batch_size = options.get("max_concurrent") or 2
    remaining = extra["num_samples"] - len(finished)
    summaries = []
    pending = unfinished[:remaining]   # resume interrupted configurations first
    while remaining > 0:
        batch = list(pending)
        keys = {(p["afwd"], p["abkw"]) for p in batch}
        asked = []   # (optuna trial, point), told once the batch has run
        repeats = 0
        while len(batch) < min(batch_size, remaining) and repeats < MAX_REPEATED_PROPOSALS:
            trial = study.ask(distributions)
            point = point_from_params(trial.params)
            key = (point["afwd"], point["abkw"])
            if key in done:
                _tell(optuna, study, trial, _finite(scores.get(key)))
            else:
                asked.append((trial, point))
            if key in done or key in keys:
                repeats += 1
                continue
            batch.append(point)
            keys.add(key)
            repeats = 0
        if not batch:
            print(f"{experiment.name}: optuna proposed only configurations that already ran "
                  f"({MAX_REPEATED_PROPOSALS} in a row): the space holds no more; stopping "
                  f"with {len(done)} of {extra['num_samples']}")
            break
        summaries.append(run_points(experiment, batch, results_root, options))
        scores = config_scores(results_root, experiment)
        for trial, point in asked:
            _tell(optuna, study, trial, _finite(scores.get((point["afwd"], point["abkw"]))))
        for point in pending:
            _add_recorded(optuna, study, distributions, point,
                          _finite(scores.get((point["afwd"], point["abkw"]))))
        pending = []
        done |= keys
        remaining -= len(batch)
        if summaries[-1].exit_code:
            break   # a configuration failed for good: stop asking, report what ran
    return summaries
