"""`onorm tune EXPERIMENT`: search Online Norm's decay factors (afwd, abkw) with Ray Tune.

Same trainer, Parquet files, resume semantics and resources as `onorm run`; trials stopped
early by the scheduler are recorded as `stopped`. Ends with the ranking of configurations, a
heatmap of afwd x abkw and the best pair as a YAML snippet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="search Online Norm's decay factors (afwd, abkw) with Ray Tune",
        description="Run the tuning experiment EXPERIMENT (kind: tune in experiments.yaml): "
                    "every configuration of its search space, with early stopping, then rank "
                    "them and print the best pair as YAML to paste into an experiment.")
    from orchestrator.cli_run import add_launch_arguments

    add_launch_arguments(p, what="configurations")
    p.set_defaults(func=tune_command)


def tune_command(args: argparse.Namespace) -> int:
    from orchestrator.cli_run import check_data, load_launch, prepare_data, write_resolved
    from orchestrator.tune_experiment import planned_points, point_trials

    experiment, data_dir, results_dir = load_launch(args, "tune")
    points = planned_points(experiment)
    known = points if points is not None else [{"afwd": 0.5, "abkw": 0.5}]  # Optuna: data check
    trials = point_trials(experiment, known, data_dir=data_dir, cpu_only=args.cpu_only)
    problem = check_data(experiment, trials)
    if args.dry_run:
        print_plan(experiment, trials if points is not None else [], results_dir)
        if problem:
            print(f"warning: {problem}", file=sys.stderr)
        return 0
    if points is None:
        from orchestrator.tune_search import import_optuna

        import_optuna()   # a missing optional package is reported before anything starts
    prepare_data(experiment, trials, problem)
    options = dict(address=args.address, data_dir=data_dir, cpu_only=args.cpu_only,
                   max_concurrent=args.max_concurrent or experiment.max_concurrent)
    from orchestrator.runner import connect
    from orchestrator.tune_search import run_optuna, run_points

    if points is not None:
        write_resolved(experiment, trials, results_dir)
        summaries = [run_points(experiment, points, results_dir, options)]
    else:
        import ray

        write_resolved(experiment, [], results_dir)
        started = connect(args.address)   # one Ray for every Optuna batch
        try:
            summaries = run_optuna(experiment, results_dir, options)
        finally:
            if started:
                ray.shutdown()
    from orchestrator.tune_report import write_tuning_report

    write_tuning_report(experiment.name, results_dir / experiment.name)
    failed = any(s.exit_code for s in summaries)
    if failed:
        print("some trials failed: see the error column of "
              f"{results_dir / experiment.name / 'trials.parquet'}; re-run the same command "
              "to retry them", file=sys.stderr)
    return 1 if failed else 0


def print_plan(experiment, trials, results_dir: Path) -> None:
    from orchestrator.dry_run import print_plan as print_trials
    from orchestrator.recorder import SEARCH_DONE_STATUSES

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
        print_trials(experiment, trials, results_dir, SEARCH_DONE_STATUSES)
    else:
        print(f"optuna proposes {extra['num_samples']} configurations as results arrive; "
              "nothing to list before it runs")
