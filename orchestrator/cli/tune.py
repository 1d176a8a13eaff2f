"""`onorm tune EXPERIMENT`: search Online Norm's decay factors (afwd, abkw) with Ray Tune.

Same trainer, Parquet files, resume semantics and resources as `onorm run`; trials stopped
early by the scheduler are recorded as `stopped`. Ends with the ranking of configurations, a
heatmap of afwd x abkw and the best pair as a YAML snippet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.cli.launch import (
    add_launch_arguments,
    checked_trials,
    failed_hint,
    load_launch,
    write_resolved,
)
from orchestrator.layout import SEARCH_DONE_STATUSES, ExperimentLayout
from trainers.errors import UserError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="search Online Norm's decay factors (afwd, abkw) with Ray Tune",
        description="Run the tuning experiment EXPERIMENT (kind: tune in experiments.yaml): "
                    "every configuration of its search space, with early stopping, then rank "
                    "them and print the best pair as YAML to paste into an experiment.")
    add_launch_arguments(p, what="configurations")
    p.set_defaults(func=tune_command)


def tune_command(args: argparse.Namespace) -> int:
    from orchestrator.plan.tune_kind import planned_points, point_trials

    experiment, data_dir, results_root, config = load_launch(args, "tune")
    points = planned_points(experiment)
    if points is None and args.only:
        raise UserError(f"experiment {experiment.name!r}: --only needs the configurations "
                        "listed before the search runs, and searcher optuna proposes them as "
                        "results arrive: use searcher grid or random, or drop --only")
    known = points if points is not None else [{"afwd": 0.5, "abkw": 0.5}]  # Optuna: data check
    planned = point_trials(experiment, known, data_dir=data_dir, cpu_only=args.cpu_only)
    if points is None and not args.dry_run:
        from orchestrator.execute.search import import_optuna

        import_optuna()   # a missing optional package is reported before anything starts

    def show_plan(trials):   # Optuna's points are proposed as it runs: none to list yet
        print_plan(experiment, trials if points is not None else [], results_root)

    checked = checked_trials(experiment, planned, args, show_plan)
    if checked is None:
        return 0
    trials, log = checked
    recorded = trials if points is not None else []
    chosen = {t.trial_id for t in trials}
    options = dict(address=args.address, data_dir=data_dir, cpu_only=args.cpu_only,
                   max_concurrent=args.max_concurrent or experiment.max_concurrent, log=log,
                   select=(lambda specs: [t for t in specs if t.trial_id in chosen])
                   if args.only else None,
                   on_start=lambda: write_resolved(experiment, recorded, results_root, config,
                                                   args.only))
    from orchestrator.execute.search import run_optuna, run_points, search_setting

    if points is not None:
        summaries = [run_points(experiment, points, results_root, options)]
    else:
        import ray

        from orchestrator.execute.runner import connect

        started = connect(args.address)   # one Ray for every Optuna batch
        try:
            summaries = run_optuna(experiment, results_root, options)
        finally:
            if started:
                ray.shutdown()
    from orchestrator.report.tuning_report import write_tuning_report

    layout = ExperimentLayout.of(results_root, experiment.name)
    write_tuning_report(experiment.name, layout.dir, search_setting(experiment))
    failed = any(s.exit_code for s in summaries)
    if failed:
        print(failed_hint(layout), file=sys.stderr)
    return 1 if failed else 0


def print_plan(experiment, trials, results_root: Path) -> None:
    from orchestrator.cli.dry_run import print_plan as print_trials

    extra = experiment.extra
    space = ", ".join(f"{k} {v['kind']} [{v['low']:g}, {v['high']:g}]"
                      for k, v in extra["space"].items())
    scheduler = extra["scheduler"]
    stop = ("no early stopping" if scheduler["type"] == "none" else
            f"ASHA on val_acc1 (grace {scheduler['grace_period']} epochs, "
            f"reduction factor {scheduler['reduction_factor']})")
    print(f"{experiment.name}: searcher {extra['searcher']}, space {space}; {stop}; "
          f"{len(extra['seeds'])} seed(s) per configuration")
    if trials:
        print_trials(experiment, trials, results_root, SEARCH_DONE_STATUSES)
    else:
        print(f"optuna proposes {extra['num_samples']} configurations as results arrive; "
              "nothing to list before it runs")
