"""The `kind: tune` experiment: validation of a decay-factor search and its expansion to trials.

A tuning experiment is a base trial (shared settings, online norm) plus a search space for
(afwd, abkw), a searcher, an early-stopping scheduler, seeds per configuration and a budget.
Grid and random searchers expand to a fixed, seeded list of configurations, so each has a
stable trial_id and `onorm tune` resumes exactly like `onorm run`; Optuna proposes points as
results arrive (orchestrator/execute/search.py).
"""

from __future__ import annotations

from typing import Any

from orchestrator.plan.experiments import Experiment, check_trial_config, register_kind
from orchestrator.plan.fields import (
    MAX_TRIALS,
    as_int,
    as_mapping,
    check_keys,
    parse_seeds,
    too_many_trials,
    where,
)
from orchestrator.plan.search_space import (
    DECAY_KEYS,
    SEARCHERS,
    DecayAxis,
    grid_points,
    parse_space,
    random_points,
)
from orchestrator.plan.trials import TrialSpec, data_folder, make_trial
from trainers.config import MAX_EPOCHS, MAX_SEED, make_config
from trainers.errors import UserError

TUNE_KEYS = {
    "space": "{afwd: {dyadic: [kmin, kmax]} | {loguniform: [low, high]}, abkw: ...}",
    "searcher": f"one of {', '.join(SEARCHERS)} (default grid)",
    "num_samples": "configurations to try (random, optuna; for grid an upper bound)",
    "search_seed": "seed of the random/optuna searcher (default 0)",
    "scheduler": "{type: asha|none, grace_period, reduction_factor} (default: none)",
    "seeds": "training seeds per configuration (count or list, default 1)",
}
SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor")
SCHEDULER_TYPES = ("asha", "none")
MAX_REDUCTION_FACTOR = 1000


def parse_scheduler(name: str, raw: Any, epochs: int) -> dict[str, Any]:
    """Early stopping: none unless the experiment asks for it with `type: asha`."""
    if raw is None:
        return {"type": "none", "grace_period": 1, "reduction_factor": 3}
    raw = as_mapping(name, "scheduler", raw)
    check_keys(name, "scheduler", raw, SCHEDULER_KEYS)
    if "type" not in raw:
        raise UserError(f"{where(name, 'scheduler.type')}: missing: set `type: asha` to stop "
                        "poor configurations early, or `type: none` (the default without a "
                        "scheduler block) to train every one to the end")
    kind = raw["type"]
    if kind not in SCHEDULER_TYPES:
        raise UserError(f"{where(name, 'scheduler.type')}: unknown scheduler {kind!r}; "
                        f"choose one of {', '.join(SCHEDULER_TYPES)}")
    grace = as_int(name, "scheduler.grace_period", raw.get("grace_period", 1), 1, MAX_EPOCHS)
    factor = as_int(name, "scheduler.reduction_factor", raw.get("reduction_factor", 3), 2,
                    MAX_REDUCTION_FACTOR)
    if kind == "asha" and grace > epochs:
        raise UserError(f"{where(name, 'scheduler.grace_period')}: {grace} is more than the "
                        f"{epochs} epochs of a trial: lower it, or raise settings.epochs")
    return {"type": kind, "grace_period": grace, "reduction_factor": factor}


def parse_tune(name: str, common: dict[str, Any], raw: dict[str, Any]) -> Experiment:
    settings = common["settings"]
    fixed = [k for k in (*DECAY_KEYS, "norm") if k in settings]
    if fixed:
        raise UserError(f"{where(name, 'settings.' + fixed[0])}: a tuning experiment searches "
                        "afwd and abkw with online norm; remove it from settings and set the "
                        "range under `space:`")
    if raw.get("space") is None:
        raise UserError(f"{where(name, 'space')}: missing: give e.g. "
                        "`space: {afwd: {dyadic: [8, 12]}, abkw: {dyadic: [4, 9]}}`")
    space = parse_space(where(name, "space"), raw["space"])
    searcher = raw.get("searcher", "grid")
    if searcher not in SEARCHERS:
        raise UserError(f"{where(name, 'searcher')}: unknown searcher {searcher!r}; "
                        f"choose one of {', '.join(SEARCHERS)}")
    num_samples = raw.get("num_samples")
    if num_samples is None and searcher != "grid":
        raise UserError(f"{where(name, 'num_samples')}: searcher {searcher} needs a budget: "
                        "set num_samples (configurations to try)")
    if num_samples is not None:
        num_samples = as_int(name, "num_samples", num_samples, 1, MAX_TRIALS)
    if searcher == "grid":
        size = len(grid_points(space))
        if num_samples is not None and size > num_samples:
            raise UserError(f"{where(name, 'num_samples')}: the dyadic grid has {size} "
                            f"configurations, more than the budget {num_samples}: narrow the "
                            "space, raise num_samples, or use searcher: random")
    else:
        size = num_samples
    seeds = parse_seeds(name, "seeds", raw.get("seeds", 1))
    if size * len(seeds) > MAX_TRIALS:
        raise UserError(too_many_trials(name, "seeds" if len(seeds) > 1 else "num_samples",
                                        size * len(seeds)))
    # one trial as the search will run it (decay factors inside any space's range)
    check_trial_config(name, common, {**settings, "norm": "online", "afwd": 0.5, "abkw": 0.5,
                                      "seed": max(seeds)},
                       lambda key: f"settings.{key}" if key in settings else "settings")
    epochs = int(settings.get("epochs", make_config(common["dataset"], ".").epochs))
    extra = {
        "space": {k: {"kind": a.kind, "low": a.low, "high": a.high} for k, a in space.items()},
        "searcher": searcher,
        "num_samples": num_samples,
        # Optuna's sampler seeds numpy, which takes 32 bits
        "search_seed": as_int(name, "search_seed", raw.get("search_seed", 0), 0, MAX_SEED),
        "scheduler": parse_scheduler(name, raw.get("scheduler"), epochs),
        "seeds": list(seeds),
    }
    return Experiment(name=name, kind="tune", extra=extra, **common)


register_kind("tune", parse_tune, TUNE_KEYS)


def space_of(experiment: Experiment) -> dict[str, DecayAxis]:
    return {k: DecayAxis(**v) for k, v in experiment.extra["space"].items()}


def planned_points(experiment: Experiment) -> list[dict[str, float]] | None:
    """The configurations of a grid/random search; None for Optuna (proposed as it goes)."""
    extra = experiment.extra
    if extra["searcher"] == "grid":
        return grid_points(space_of(experiment))
    if extra["searcher"] == "random":
        return random_points(space_of(experiment), extra["num_samples"], extra["search_seed"])
    return None


def point_trials(experiment: Experiment, points: list[dict[str, float]], *,
                 data_dir: str | None = None, cpu_only: bool = False) -> list[TrialSpec]:
    """One trial per (configuration, seed): the base settings with norm online and the point."""
    folder = data_folder(experiment, data_dir)
    trials = []
    for point in points:
        for seed in experiment.extra["seeds"]:
            config = make_config(experiment.dataset, folder, **experiment.settings,
                                 norm="online", afwd=point["afwd"], abkw=point["abkw"],
                                 seed=seed)
            try:
                trials.append(make_trial(config, experiment.resources, experiment.synthetic,
                                         cpu_only=cpu_only))
            except UserError as err:
                raise UserError(f"experiment {experiment.name!r}: {err}") from None
    return trials
