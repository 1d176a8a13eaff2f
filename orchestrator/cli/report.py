"""`onorm table` and `onorm plot`: the paper's statistic and curves from results Parquet."""

from __future__ import annotations

import argparse

from orchestrator import storage
from orchestrator.layout import ExperimentLayout
from trainers.errors import UserError

PLOT_FORMATS = ("png", "pdf", "svg")   # what matplotlib writes without extra packages


def resolve_experiment_dir(target: str, results_root: str) -> storage.Location:
    """An experiment folder (a path or a URI): `target` itself when it holds
    metrics.parquet, else the experiment named `target` under the results root."""
    direct = ExperimentLayout(storage.location(target))
    if not storage.is_uri(target):
        storage.check_root(storage.location(results_root))
    else:
        storage.check_root(direct.dir)
    if storage.exists(direct.metrics):
        return direct.dir
    named = ExperimentLayout.of(results_root, target)
    if storage.exists(named.metrics):
        return named.dir
    if named.dir == direct.dir or len(direct.dir.parts) > 1:  # a path, not an experiment name
        raise UserError(f"no results in {target!r}: {direct.metrics} does not "
                        "exist; pass a folder written by `onorm run` or an experiment name")
    raise UserError(f"no results for {target!r}: neither {direct.metrics} nor "
                    f"{named.metrics} exists; run `onorm run {target}` first or "
                    "pass --results DIR")


def _common(p: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        p.add_argument("experiments", nargs="+", metavar="EXPERIMENT_OR_RESULTS_DIR",
                       help="experiment name (read from RESULTS/NAME) or a folder holding "
                            "metrics.parquet; several: one table, a column group each")
    else:
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
                    "tables/{accuracy,loss}.{md,csv,tex} and prints one format. With several "
                    "experiments (onorm table cifar10 cifar100): the paper's layout, "
                    "normalizers as rows and a column group per dataset with our median "
                    "(min-max) beside the paper's median, written to "
                    "RESULTS/_tables/A+B/{accuracy,loss}.{md,csv,tex}.")
    _common(p, several=True)
    p.add_argument("--metric", choices=("accuracy", "loss", "both"), default="both",
                   help="which table(s) to print (files hold both; default: both)")
    p.add_argument("--format", choices=("md", "csv", "latex"), default="md",
                   help="printed format (files are written in all three; default: md)")
    p.set_defaults(func=run_table)

    p = subparsers.add_parser(
        "plot", help="validation/training curves per normalizer (PNG, PDF or SVG)",
        description="Median over runs with a min-max band, per setting; writes "
                    "plots/val_acc1.png, plots/val_loss.png, plots/train_loss.png (or .pdf, "
                    ".svg with --format).")
    _common(p)
    p.add_argument("--format", choices=PLOT_FORMATS, default="png",
                   help="file format of the plots (default: png)")
    p.set_defaults(func=run_plot)


def run_table(args: argparse.Namespace) -> int:
    from orchestrator.report.stats import load_runs
    from orchestrator.report.table import render, write_tables

    if len(args.experiments) > 1:
        return run_combined_table(args)
    exp_dir = resolve_experiment_dir(args.experiments[0], args.results)
    runs = load_runs(exp_dir, args.include_running)
    written = write_tables(exp_dir, args.include_running, runs=runs)
    metrics = ("accuracy", "loss") if args.metric == "both" else (args.metric,)
    for metric in metrics:
        print(render(runs, metric, args.format))
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


def run_combined_table(args: argparse.Namespace) -> int:
    """`onorm table A B ...`: one table, a column group per experiment's dataset."""
    from orchestrator.report import combined
    from orchestrator.report.stats import load_runs

    dirs = [resolve_experiment_dir(target, args.results) for target in args.experiments]
    names = [d.name for d in dirs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"experiment {twice[0]!r} is given twice: name each experiment once")
    named_runs = [(d.name, load_runs(d, args.include_running)) for d in dirs]
    written = combined.write_tables(storage.results_root(args.results), named_runs)
    metrics = ("accuracy", "loss") if args.metric == "both" else (args.metric,)
    for metric in metrics:
        print(combined.render(named_runs, metric, args.format))
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from orchestrator.report.plot import write_plots

    exp_dir = resolve_experiment_dir(args.experiment, args.results)
    paths = write_plots(exp_dir, args.include_running, fmt=args.format)
    if not paths:
        print(f"no finished epochs in {exp_dir}: nothing to plot "
              "(--include-running uses runs still in progress)")
    for path in paths:
        print(path)
    return 0
