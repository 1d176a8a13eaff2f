"""`onorm status [EXPERIMENT]`: how far each experiment under the results root has got.

Read-only and without Ray: from trials.parquet, metrics.parquet, experiment.yaml, the trial
store and the folder's lock (which names the `onorm run` writing it), so it works while a
grid runs in another process. A trial recorded as running in a folder that no live run
holds was cut short (the driver died or was interrupted): it shows as pending, which is what
the next run makes of it. A damaged Parquet file is the line the other commands give, and the
experiment is then shown from the trial store alone.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from orchestrator import storage
from orchestrator.layout import DONE_STATUSES, SEARCH_DONE_STATUSES, ExperimentLayout
from trainers.errors import UserError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "status", help="done / total, running trials, elapsed time and ETA of experiments",
        description="For each experiment under RESULTS (or only EXPERIMENT): trials done of "
                    "the total, the running ones with their epoch, the elapsed time and an "
                    "ETA. Reads the results files only (no Ray), so it can run beside "
                    "`onorm run`.")
    p.add_argument("experiment", nargs="?", metavar="EXPERIMENT",
                   help="only this experiment, with every one of its trials")
    p.add_argument("--results", metavar="DIR", default="results",
                   help="results root holding one folder per experiment, a folder or a URI "
                        "such as s3://bucket/r (default: results)")
    p.set_defaults(func=status_command)


def status_command(args: argparse.Namespace) -> int:
    root = storage.location(args.results)
    if not storage.is_remote(root):
        root = root.expanduser()
    storage.check_root(root)
    if args.experiment:
        layout = ExperimentLayout.of(root, args.experiment)
        if not is_experiment(layout.dir):
            raise UserError(f"no results for {args.experiment!r} in {root}: run `onorm run "
                            f"{args.experiment}` first, or pass --results DIR")
        layouts = [layout]
    else:
        if not storage.is_dir(root):
            raise UserError(f"no results folder {str(root)!r}: run `onorm run EXPERIMENT` "
                            "first, or pass --results DIR")
        layouts = [ExperimentLayout(root / name) for name, folder in storage.children(root)
                   if folder and is_experiment(root / name)]
        if not layouts:
            print(f"no experiments in {root}")
            return 0
    now = time.time()
    for i, layout in enumerate(layouts):
        status = experiment_status(layout, now)
        if status.warning:
            print(f"warning: {status.warning} (shown from the trial store alone)",
                  file=sys.stderr)
        print(("\n" if i else "") + render(status, every_trial=bool(args.experiment)))
    return 0


def is_experiment(folder: storage.Location) -> bool:
    layout = ExperimentLayout(folder)
    return storage.is_dir(folder) and any(
        storage.exists(p) for p in (layout.trials, layout.metrics, layout.resolved, layout.store))


class ExperimentStatus:
    def __init__(self, layout, kind, trials, summary, holder, others, warning, updated):
        self.layout, self.kind, self.trials, self.summary = layout, kind, trials, summary
        self.holder, self.others, self.warning, self.updated = holder, others, warning, updated


def experiment_status(layout: ExperimentLayout, now: float) -> ExperimentStatus:
    from orchestrator.execute.lock import lock_holder
    from orchestrator.report.grid_progress import summarize
    from orchestrator.report.results import read_resolved

    resolved = read_resolved(layout)
    kind = resolved.get("kind") or "grid"
    done_statuses = SEARCH_DONE_STATUSES if kind == "tune" else DONE_STATUSES
    holder = lock_holder(layout.dir)
    warning = None
    try:
        rows, metrics = recorded_rows(layout)
    except UserError as err:
        rows, metrics, warning = {}, {}, str(err)
    planned = [t for t in resolved.get("trials") or [] if isinstance(t, dict)]
    plan = {t["trial_id"]: t for t in planned if isinstance(t.get("trial_id"), str)}
    ids = list(plan) or list(rows) or stored_ids(layout)
    trials = [watched_trial(layout, trial_id, rows.get(trial_id, {}),
                            metrics.get(trial_id, []), plan.get(trial_id), holder is not None)
              for trial_id in ids]
    trials = [t for t in trials if t is not None]
    others = len(set(rows) - set(ids))
    slots = resolved.get("max_concurrent")
    summary = summarize(trials, done_statuses, now,
                        holder.get("started_at") if holder else None, live=holder is not None,
                        slots=slots if isinstance(slots, int) else None)
    updated = max((float(r.get("updated_at") or 0) for r in rows.values()), default=None)
    return ExperimentStatus(layout, kind, trials, summary, holder, others, warning, updated)


def recorded_rows(layout: ExperimentLayout) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """trials.parquet by trial, and the metrics of each trial (epoch, time, accuracy)."""
    from orchestrator.report.results import read_results

    table = read_results(layout, "trials", arrow=True)
    rows = {r["trial_id"]: r for r in table.to_pylist()} if table is not None else {}
    metrics: dict[str, list[dict]] = {}
    table = read_results(layout, "metrics", ["trial_id", "epoch", "epoch_time_s", "val_acc1"],
                         arrow=True)
    for r in table.to_pylist() if table is not None else []:
        metrics.setdefault(r["trial_id"], []).append(r)
    return rows, metrics


def stored_ids(layout: ExperimentLayout) -> list[str]:
    from orchestrator.execute.store import TrialStore

    return TrialStore(layout.store).trial_ids()


def watched_trial(layout: ExperimentLayout, trial_id: str, row: dict[str, Any],
                  metrics: list[dict], payload: dict | None, live: bool):
    """One trial's progress from its row, its metrics and its store (the store is ahead of
    the Parquet files by the epoch in flight); None for a trial nothing describes."""
    from norms.modes import options_of
    from orchestrator.execute.store import TrialStore
    from orchestrator.report.grid_progress import TrialProgress, seconds_per_epoch

    store = TrialStore(layout.store)
    state = store.state(trial_id)
    config = (payload or store.spec(trial_id) or {}).get("config") or {}
    if not config and row.get("config_json"):
        import json

        try:
            config = json.loads(row["config_json"])
        except ValueError:
            config = {}
    norm = row.get("norm") or config.get("norm")
    if norm is None:
        return None
    history = state["history"] or metrics
    epochs = [int(m["epoch"]) for m in history] + [int(m["epoch"]) for m in metrics]
    times = [float(m["epoch_time_s"]) for m in history
             if m.get("epoch_time_s") is not None and math.isfinite(m["epoch_time_s"])]
    last = max(history, key=lambda m: int(m["epoch"]), default=None)
    acc = last.get("val_acc1") if last else None
    status = state["outcome"] or row.get("status") or ("running" if state["attempts"] else
                                                        "pending")
    if status == "running" and not live:
        status = "pending"   # no run holds the folder: it was cut short, and resumes
    started = row.get("started_at")
    start_epoch = int(row.get("start_epoch") or 0)
    if started is None or not math.isfinite(started):
        started = (state.get("context") or {}).get("started_at")
        start_epoch = int(state["start_epoch"])
    done = max(epochs, default=0)
    until = time.time() if status == "running" else row.get("updated_at")
    seed = row.get("seed", config.get("seed"))
    return TrialProgress(
        trial_id, norm, {k: row.get(k, config.get(k)) for k in options_of(norm)},
        None if seed is None else int(seed), status,
        done, int(row.get("epochs") or config.get("epochs") or 0),
        max(int(row.get("attempts") or 0), int(state["attempts"])), started,
        seconds_per_epoch(times, started, start_epoch, done, until),
        acc if acc is not None and math.isfinite(acc) else None)


def render(status: ExperimentStatus, every_trial: bool = False) -> str:
    from orchestrator.report.grid_progress import format_duration, summary_line

    done = SEARCH_DONE_STATUSES if status.kind == "tune" else DONE_STATUSES
    s = status.summary
    lines = [f"{status.layout.name} ({status.kind}): {summary_line(s, done)}"]
    holder = status.holder
    if holder is not None:
        where = f" on {holder.get('host')}" if holder.get("remote") else ""
        lines.append(f"  running: pid {holder.get('pid')}{where}, started "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['started_at']))}")
    else:
        ago = (f" (last update {format_duration(time.time() - status.updated)} ago)"
               if status.updated else "")
        lines.append(f"  not running{ago}")
    if status.others:
        lines.append(f"  {status.others} more trial(s) recorded here, of an earlier plan")
    shown = status.trials if every_trial else s.running
    if shown:
        lines += ["  " + line for line in trial_table(shown)]
    return "\n".join(lines)


def trial_table(trials) -> list[str]:
    from orchestrator.report.grid_progress import format_duration, trial_eta
    from orchestrator.report.option_labels import compact_options

    now = time.time()
    header = ["trial", "norm", "options", "seed", "status", "epoch", "elapsed", "ETA",
              "val acc1"]
    rows = []
    for t in trials:
        running = t.status == "running"
        rows.append([t.trial_id, t.norm, compact_options(t.norm, t.options) or "-",
                     "-" if t.seed is None else str(t.seed), t.status,
                     f"{t.epochs_done}/{t.epochs}",
                     format_duration(now - t.started_at) if running and t.started_at else "",
                     format_duration(trial_eta(t)) if running else "",
                     f"{t.val_acc1:.2f}" if t.val_acc1 is not None else "-"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
