"""Result tables: the paper's statistic per setting beside the paper's numbers, as md/csv/tex.

Files written under the experiment folder's tables/:
    accuracy.md, accuracy.csv, accuracy.tex   validation top-1 accuracy (percent)
    loss.md,     loss.csv,     loss.tex       validation loss
Columns: dataset, network, norm, options, best_epoch, epochs (last epoch reached), median,
min, max, mean, std, runs, diverged, then the paper's best_epoch, total epochs and median
for the matching row, and diff = ours - paper (median). With one run, min, max and std are
N/A (empty in the CSV). How the statistic is computed: orchestrator/report/stats.py.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from orchestrator import storage
from orchestrator.layout import ExperimentLayout
from orchestrator.report.paper import DATASET_NAMES, network_name, paper_entry
from orchestrator.report.stats import Runs, Summary, excluded_note, load_runs, summarize

METRICS = ("accuracy", "loss")
FORMATS = ("md", "csv", "latex")
FILE_SUFFIX = {"md": ".md", "csv": ".csv", "latex": ".tex"}
TITLES = {"accuracy": "validation top-1 accuracy (%)", "loss": "validation loss"}
COLUMNS = ["dataset", "network", "norm", "options", "best_epoch", "epochs", "median", "min",
           "max", "mean", "std", "runs", "diverged", "paper_best_epoch", "paper_epochs",
           "paper_median", "diff"]
HEADERS = {"best_epoch": "best epoch", "paper_best_epoch": "paper best epoch",
           "paper_epochs": "paper epochs", "paper_median": "paper median",
           "diff": "diff (ours - paper)"}
# Decimals shown in md/tex (the CSV keeps full precision): the paper's own precision plus one.
DECIMALS = {"accuracy": {"value": 2, "std": 3}, "loss": {"value": 3, "std": 4}}
VALUE_COLUMNS = ("median", "min", "max", "mean", "paper_median", "diff")


def table_rows(runs: Runs, metric: str) -> list[dict[str, Any]]:
    """One dict per setting with every column of COLUMNS (None where not applicable)."""
    rows = []
    for s in summarize(runs, metric):
        rows.append(_row(s, metric))
    return rows


def _row(s: Summary, metric: str) -> dict[str, Any]:
    st = s.setting
    paper = paper_entry(metric, st.dataset, st.arch, st.depth, st.norm, st.options)
    return {
        "dataset": DATASET_NAMES.get(st.dataset, st.dataset),
        "network": network_name(st.arch, st.depth),
        "norm": st.norm, "options": st.option_text,
        "best_epoch": s.best_epoch, "epochs": s.epochs,
        "median": s.median, "min": s.min, "max": s.max, "mean": s.mean, "std": s.std,
        "runs": s.runs, "diverged": s.diverged,
        "paper_best_epoch": paper["best_epoch"] if paper else None,
        "paper_epochs": paper["total_epochs"] if paper else None,
        "paper_median": paper["median"] if paper else None,
        "diff": s.median - paper["median"] if paper else None,
    }


def footer_lines(runs: Runs) -> list[str]:
    lines = [n for n in [excluded_note(runs)] if n] + list(runs.notes)
    lines.append("std: population standard deviation (ddof=0) over runs at the best epoch; "
                 "best epoch: where the median over runs is best.")
    return lines


def _cell(row: dict[str, Any], col: str, metric: str) -> str:
    value = row[col]
    if value is None:
        if col in ("min", "max", "std") and row["runs"] == 1:
            return "N/A"
        return "" if col.startswith("paper") or col == "diff" else "N/A"
    if col == "diverged":
        return f"{value}†" if value else "0"
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
        digits = DECIMALS[metric]["std" if col == "std" else "value"]
        return f"{value:+.{digits}f}" if col == "diff" else f"{value:.{digits}f}"
    return str(value)


def render_markdown(runs: Runs, rows: list[dict[str, Any]], metric: str) -> str:
    header = [HEADERS.get(c, c) for c in COLUMNS]
    lines = [f"## {runs.experiment}: {TITLES[metric]}", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join("---" if c in ("dataset", "network", "norm", "options")
                            else "---:" for c in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, c, metric) for c in COLUMNS) + " |")
    if not rows:
        lines.append("| " + " | ".join(["(no finished runs)"] + [""] * (len(COLUMNS) - 1))
                     + " |")
    lines.append("")
    lines += footer_lines(runs)
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v)
                         for k, v in row.items()})
    return buf.getvalue()


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}", "†": r"\textdagger{}"}


def tex_text(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def render_latex(runs: Runs, rows: list[dict[str, Any]], metric: str) -> str:
    align = "".join("l" if c in ("dataset", "network", "norm", "options") else "r"
                    for c in COLUMNS)
    lines = [f"% {tex_text(runs.experiment)}: {tex_text(TITLES[metric])}",
             f"\\begin{{tabular}}{{{align}}}", r"\hline",
             " & ".join(tex_text(HEADERS.get(c, c)) for c in COLUMNS) + r" \\", r"\hline"]
    for row in rows:
        lines.append(" & ".join(tex_text(_cell(row, c, metric)) for c in COLUMNS) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    lines += ["% " + tex_text(line) for line in footer_lines(runs)]
    return "\n".join(lines) + "\n"


def render(runs: Runs, metric: str, fmt: str) -> str:
    rows = table_rows(runs, metric)
    if fmt == "md":
        return render_markdown(runs, rows, metric)
    if fmt == "csv":
        return render_csv(rows)
    return render_latex(runs, rows, metric)


def write_tables(exp_dir: Path, include_running: bool = False,
                 runs: Runs | None = None) -> dict[tuple[str, str], Path]:
    """Write every metric in every format; returns {(metric, fmt): path}."""
    layout = ExperimentLayout(storage.location(exp_dir))
    runs = runs if runs is not None else load_runs(layout.dir, include_running)
    written = {}
    for metric in METRICS:
        for fmt in FORMATS:
            path = layout.table(metric, FILE_SUFFIX[fmt])
            storage.write_text(path, render(runs, metric, fmt))
            written[(metric, fmt)] = path
    return written


def write_report(exp_dir: Path, include_running: bool = False) -> list[Path]:
    """Tables and plots for one experiment folder; [] when it holds no metrics yet.

    Called at the end of `onorm run`; partial results (running trials, no trials.parquet,
    no finished epoch) give partial or empty tables and no plots rather than an error.
    """
    from orchestrator.report.plot import write_plots

    layout = ExperimentLayout(storage.location(exp_dir))
    if not storage.exists(layout.metrics):
        return []
    runs = load_runs(layout.dir, include_running)
    paths = list(write_tables(layout.dir, include_running, runs=runs).values())
    paths += write_plots(layout.dir, include_running, runs=runs)
    return paths
