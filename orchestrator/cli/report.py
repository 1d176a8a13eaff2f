"""`onorm table` and `onorm plot`: the paper's statistic and curves from results Parquet."""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.layout import ExperimentLayout
from trainers.errors import UserError


def resolve_experiment_dir(target: str, results_root: str) -> Path:
    """An experiment folder: `target` itself when it holds metrics.parquet, else the
    experiment named `target` under the results root."""
    direct = ExperimentLayout(Path(target))
    if direct.metrics.exists():
        return direct.dir
    named = ExperimentLayout.of(results_root, target)
    if named.metrics.exists():
        return named.dir
    if named.dir == direct.dir or len(direct.dir.parts) > 1:  # a path, not an experiment name
        raise UserError(f"no results in {target!r}: {direct.metrics} does not "
                        "exist; pass a folder written by `onorm run` or an experiment name")
    raise UserError(f"no results for {target!r}: neither {direct.metrics} nor "
                    f"{named.metrics} exists; run `onorm run {target}` first or "
                    "pass --results DIR")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", metavar="EXPERIMENT_OR_RESULTS_DIR",
                   help="experiment name (read from RESULTS/NAME) or a folder holding "
                        "metrics.parquet")
    p.add_argument("--results", default="results",
                   help="folder holding one subfolder per experiment (default: results)")
    p.add_argument("--include-running", action="store_true",
                   help="also use runs that are pending, running or failed")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "table", help="median-of-runs table beside the paper's numbers",
        description="Per setting: the best epoch of the median curve over runs and the "
                    "median/min/max/mean/std there, beside the paper's numbers. Writes "
                    "tables/{accuracy,loss}.{md,csv,tex} and prints one format.")
    _common(p)
    p.add_argument("--metric", choices=("accuracy", "loss", "both"), default="both",
                   help="which table(s) to print (files hold both; default: both)")
    p.add_argument("--format", choices=("md", "csv", "latex"), default="md",
                   help="printed format (files are written in all three; default: md)")
    p.set_defaults(func=run_table)

    p = subparsers.add_parser(
        "plot", help="validation/training curves per normalizer as PNGs",
        description="Median over runs with a min-max band, per setting; writes "
                    "plots/val_acc1.png, plots/val_loss.png, plots/train_loss.png.")
    _common(p)
    p.set_defaults(func=run_plot)


def run_table(args: argparse.Namespace) -> int:
    from orchestrator.report.stats import load_runs
    from orchestrator.report.table import render, write_tables

    exp_dir = resolve_experiment_dir(args.experiment, args.results)
    runs = load_runs(exp_dir, args.include_running)
    written = write_tables(exp_dir, args.include_running, runs=runs)
    metrics = ("accuracy", "loss") if args.metric == "both" else (args.metric,)
    for metric in metrics:
        print(render(runs, metric, args.format))
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from orchestrator.report.plot import write_plots

    exp_dir = resolve_experiment_dir(args.experiment, args.results)
    paths = write_plots(exp_dir, args.include_running)
    if not paths:
        print(f"no finished epochs in {exp_dir}: nothing to plot "
              "(--include-running uses runs still in progress)")
    for path in paths:
        print(path)
    return 0
