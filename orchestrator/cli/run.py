"""`onorm run EXPERIMENT`: submit an experiments.yaml grid to Ray Tune, or list it (--dry-run).

No torch or ray at import time, and none at all for --dry-run: listing a grid is instant.
"""

from __future__ import annotations

import argparse
import sys

from orchestrator import storage
from orchestrator.cli.launch import (
    add_launch_arguments,
    checked_trials,
    failed_hint,
    load_launch,
    write_resolved,
)
from orchestrator.layout import ExperimentLayout


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run an experiment grid from experiments.yaml on Ray Tune",
        description="Run every trial of EXPERIMENT that is not done yet (completed trials are "
                    "skipped, interrupted ones resume from their last checkpoint) and stream "
                    "each epoch into RESULTS/EXPERIMENT/metrics.parquet.")
    add_launch_arguments(p, what="trials")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from orchestrator.plan.trials import expand

    experiment, data_dir, results_root, config = load_launch(args, "grid")
    planned = expand(experiment, data_dir=data_dir, cpu_only=args.cpu_only)

    def show_plan(trials):
        from orchestrator.cli.dry_run import print_plan

        print_plan(experiment, trials, results_root)

    checked = checked_trials(experiment, planned, args, show_plan)
    if checked is None:
        return 0
    trials, log = checked
    from orchestrator.execute.runner import run_trials

    summary = run_trials(
        experiment.name, trials, results_root, address=args.address,
        max_concurrent=args.max_concurrent or experiment.max_concurrent,
        max_failures=experiment.max_failures, log=log,
        on_start=lambda: write_resolved(experiment, trials, results_root, config, args.only))
    write_report(summary.layout)
    return print_summary(experiment, trials, summary)


def print_summary(experiment, trials, summary) -> int:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items()))
    print(f"{experiment.name}: {len(trials)} trials: {counts}")
    print(f"metrics: {summary.layout.metrics}")
    print(f"trials:  {summary.layout.trials}")
    if summary.exit_code:
        print(failed_hint(summary.layout), file=sys.stderr)
    return summary.exit_code


def write_report(layout: ExperimentLayout) -> None:
    """Tables and plots from the Parquet files; the accuracy table is printed too."""
    from orchestrator.report import table

    written = table.write_report(layout.dir)
    accuracy = layout.table("accuracy", ".md")
    if accuracy in written:
        print(storage.read_text(accuracy))
    print(f"tables:  {layout.tables}")
    print(f"plots:   {layout.plots}")
