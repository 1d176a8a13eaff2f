"""`onorm run --dry-run`: print every trial of an experiment and what has run of it so far."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.cli.recorded_so_far import recorded_so_far
from orchestrator.layout import DONE_STATUSES, ExperimentLayout
from orchestrator.plan.trials import TrialSpec, describe_options
from trainers.errors import UserError


def print_plan(experiment, trials: list[TrialSpec], results_root: Path,
               done_statuses: tuple[str, ...] = DONE_STATUSES) -> None:
    from rich.console import Console
    from rich.table import Table

    layout = ExperimentLayout.of(results_root, experiment.name)
    try:
        progress, warning = recorded_so_far(layout, trials, done_statuses), None
    except UserError as err:   # a damaged trials.parquet: the trial store still says what ran
        progress, warning = recorded_so_far(layout, trials, done_statuses, parquet=False), err
    table = Table(title=f"{experiment.name}: {len(trials)} trials "
                        f"({experiment.dataset}, results in {layout.dir})",
                  title_justify="left")
    for col in ("trial_id", "dataset", "arch", "norm", "options", "seed", "epochs", "cpu",
                "gpu", "status"):
        table.add_column(col)
    counts: dict[str, int] = {}
    for t in trials:
        c = t.config
        state, epochs_done, recorded = progress[t.trial_id]
        counts[state] = counts.get(state, 0) + 1
        detail = {"done": recorded, "partial": f"{epochs_done}/{c.epochs}", "new": ""}[state]
        arch = f"resnet{c.depth}" if c.arch == "resnet" else c.arch
        table.add_row(t.trial_id, c.dataset, arch, c.norm, describe_options(c), str(c.seed),
                      str(c.epochs), f"{t.resources['cpu']:g}", f"{t.resources['gpu']:g}",
                      f"{state} {detail}".strip())
    console = Console(width=max(Console().width, 140))
    console.print(table)
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if warning is not None:
        print(f"warning: {warning} (listed above from the trial store alone)", file=sys.stderr)
