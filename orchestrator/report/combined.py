"""One table across experiments in the paper's layout: normalizers as rows, a column group per
dataset with our "median (min-max)" beside the paper's median.

`onorm table cifar10 cifar100`. Each column group is one experiment's dataset and network
(labelled by them, and by the experiment too when two groups would read the same); each cell
is the one-experiment table's statistic (stats.summarize) at the setting's best epoch. Rows
are normalizers: a row `online` holds each group's online setting, and where a group has
several settings of one normalizer, the one with the paper's options stays on that row and
the others get rows of their own, labelled with their options. Files, in md/csv/tex:
RESULTS/_tables/A+B/{accuracy,loss}.* (orchestrator/layout.py).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import storage
from orchestrator.layout import combined_table
from orchestrator.report.paper import DATASET_NAMES, network_name, paper_entry
from orchestrator.report.stats import NORM_ORDER, Runs, Summary, excluded_note, summarize
from orchestrator.report.table import DECIMALS, FILE_SUFFIX, FORMATS, METRICS, TITLES, tex_text


@dataclass
class Group:
    """One column group: an experiment's settings of one dataset and network."""

    experiment: str
    dataset: str
    network: str
    label: str = ""
    cells: dict[str, Summary] = field(default_factory=dict)    # row -> summary
    paper: dict[str, float | None] = field(default_factory=dict)


def groups_and_rows(named_runs: list[tuple[str, Runs]], metric: str
                    ) -> tuple[list[Group], list[str]]:
    """The column groups, in the order given, and the row labels, normalizers in the paper's
    order (online, batch, layer, instance, group, none, then others as they come)."""
    groups: dict[tuple[str, str, str], Group] = {}
    norm_of: dict[str, str] = {}
    for name, runs in named_runs:
        summaries = summarize(runs, metric)
        if not summaries:   # nothing finished yet: an empty group still shows the experiment
            groups[(name, "", "")] = Group(name, "", "")
        by_group: dict[tuple[str, str, str], list[Summary]] = {}
        for s in summaries:
            st = s.setting
            by_group.setdefault((name, st.dataset, network_name(st.arch, st.depth)),
                                []).append(s)
        for key, members in by_group.items():
            group = groups[key] = Group(*key)
            for s in members:
                row = _row_label(s, members, metric)
                group.cells[row] = s
                norm_of.setdefault(row, s.setting.norm)
                paper = _paper(s, metric)
                group.paper[row] = paper["median"] if paper else None
    _label(list(groups.values()))
    order = {row: i for i, row in enumerate(norm_of)}
    rows = sorted(norm_of, key=lambda r: (
        NORM_ORDER.index(norm_of[r]) if norm_of[r] in NORM_ORDER else len(NORM_ORDER),
        norm_of[r] != r, order[r]))
    return list(groups.values()), rows


def _paper(s: Summary, metric: str) -> dict[str, Any] | None:
    st = s.setting
    return paper_entry(metric, st.dataset, st.arch, st.depth, st.norm, st.options)


def _row_label(s: Summary, members: list[Summary], metric: str) -> str:
    """The normalizer's name, unless the group has other settings of it with a better claim
    to the row (the paper's options) or with as good a one."""
    norm = s.setting.norm
    same = [m for m in members if m.setting.norm == norm]
    if len(same) == 1:
        return norm
    paper_like = [m for m in same if _paper(m, metric)]
    return norm if len(paper_like) == 1 and paper_like[0] is s else s.setting.label


def _label(groups: list[Group]) -> None:
    for g in groups:
        g.label = (f"{DATASET_NAMES.get(g.dataset, g.dataset)} {g.network}" if g.dataset
                   else g.experiment)
    seen = Counter(g.label for g in groups)
    for g in groups:
        if seen[g.label] > 1:
            g.label = f"{g.experiment}: {g.label}"


def _number(value: float, digits: int) -> str:
    if math.isinf(value) or math.isnan(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return f"{value:.{digits}f}"


def ours_text(s: Summary | None, metric: str, dash: str = "-") -> str:
    """'median (min-max)', the median alone for one run, † when a run diverged."""
    if s is None:
        return ""
    digits = DECIMALS[metric]["value"]
    text = _number(s.median, digits)
    if s.min is not None and s.max is not None:
        text += f" ({_number(s.min, digits)}{dash}{_number(s.max, digits)})"
    return text + (" †" if s.diverged else "")


def paper_text(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def footer_lines(named_runs: list[tuple[str, Runs]], groups: list[Group],
                 rows: list[str]) -> list[str]:
    """What each cell is (the setting's options, runs, best epoch), what was left out."""
    lines = ["ours: median over runs at the best epoch of the median curve (min-max over runs "
             "there; one run: the median alone); paper: the paper's median."]
    for g in groups:
        cells = []
        for row in (r for r in rows if r in g.cells):
            s = g.cells[row]
            options = s.setting.option_text if row == s.setting.norm else ""
            cells.append(f"{row} ({options + '; ' if options else ''}{s.runs} run(s), best "
                         f"epoch {s.best_epoch}/{s.epochs})")
        lines.append(f"{g.label} ({g.experiment}): {', '.join(cells) or 'no finished runs'}")
    for name, runs in named_runs:   # left out; the † note
        lines += [f"{name}: {n}" for n in [excluded_note(runs), *runs.notes] if n]
    return lines


def render_markdown(named_runs, groups: list[Group], rows: list[str], metric: str) -> str:
    title = " + ".join(name for name, _ in named_runs)
    header = ["normalizer"] + [part for g in groups for part in (g.label, "paper")]
    lines = [f"## {title}: {TITLES[metric]}", "", "| " + " | ".join(header) + " |",
             "|---|" + "---:|---:|" * len(groups)]
    for row in rows:
        cells = [p for g in groups for p in (ours_text(g.cells.get(row), metric) or "–",
                                             paper_text(g.paper.get(row)) or "–")]
        lines.append("| " + " | ".join([row] + cells) + " |")
    if not rows:
        lines.append("| (no finished runs) |" + " |" * (2 * len(groups)))
    return "\n".join(lines + [""] + footer_lines(named_runs, groups, rows)) + "\n"


CSV_FIELDS = ("median", "min", "max", "runs", "best_epoch", "paper_median")


def render_csv(groups: list[Group], rows: list[str]) -> str:
    """One row per normalizer; per group `<label> median`, min, max, runs, best_epoch and
    paper_median (empty where none)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["normalizer"] + [f"{g.label} {f}" for g in groups for f in CSV_FIELDS])
    for row in rows:
        out: list[Any] = [row]
        for g in groups:
            s = g.cells.get(row)
            values = ([s.median, s.min, s.max, s.runs, s.best_epoch] if s else [None] * 5)
            values.append(g.paper.get(row))
            out += ["" if v is None else repr(v) if isinstance(v, float) else v for v in values]
        writer.writerow(out)
    return buf.getvalue()


def render_latex(named_runs, groups: list[Group], rows: list[str], metric: str) -> str:
    """A booktabs tabular (\\usepackage{booktabs}): a \\multicolumn header per group."""
    title = " + ".join(name for name, _ in named_runs)
    lines = [f"% {tex_text(title)}: {tex_text(TITLES[metric])} (needs \\usepackage{{booktabs}})",
             f"\\begin{{tabular}}{{l{'rr' * len(groups)}}}", r"\toprule",
             " & " + " & ".join(f"\\multicolumn{{2}}{{c}}{{{tex_text(g.label)}}}"
                                for g in groups) + r" \\",
             " ".join(f"\\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(len(groups))),
             "normalizer & " + " & ".join(["ours & paper"] * len(groups)) + r" \\", r"\midrule"]
    for row in rows:
        cells = [tex_text(t) for g in groups
                 for t in (ours_text(g.cells.get(row), metric, dash="--"),
                           paper_text(g.paper.get(row)))]
        lines.append(" & ".join([tex_text(row)] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += ["% " + tex_text(line) for line in footer_lines(named_runs, groups, rows)]
    return "\n".join(lines) + "\n"


def render(named_runs: list[tuple[str, Runs]], metric: str, fmt: str) -> str:
    groups, rows = groups_and_rows(named_runs, metric)
    if fmt == "md":
        return render_markdown(named_runs, groups, rows, metric)
    if fmt == "csv":
        return render_csv(groups, rows)
    return render_latex(named_runs, groups, rows, metric)


def write_tables(results_root: Path, named_runs: list[tuple[str, Runs]]
                 ) -> dict[tuple[str, str], Path]:
    """Every metric in every format under RESULTS/_tables/A+B/; {(metric, fmt): path}."""
    names = [name for name, _ in named_runs]
    written = {}
    for metric in METRICS:
        for fmt in FORMATS:
            path = combined_table(results_root, names, metric, FILE_SUFFIX[fmt])
            storage.write_text(path, render(named_runs, metric, fmt))
            written[(metric, fmt)] = path
    return written
