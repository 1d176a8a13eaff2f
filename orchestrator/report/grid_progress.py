"""How far a grid has got: done / total, what runs, elapsed time and an ETA, as the live view
and `onorm status` both show it.

Plain Python: the live view feeds it the recorder's rows, `onorm status` the Parquet files and
the trial store. The ETA is an estimate from the epochs recorded so far: the remaining
epochs of every trial still to run, each at its own pace (or the grid's mean pace for a
trial with none yet), shared among the trials running now. A trial's pace is the wall time
of its latest attempt per epoch it trained (start-up included, which matters for short
trials), or its recorded epoch_time_s where the attempt's start is unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

# Trials a run still has to train (failed ones wait for the next run).
TO_RUN_STATUSES = ("pending", "running")


@dataclass
class TrialProgress:
    trial_id: str
    norm: str
    options: dict[str, Any]     # the normalizer's own settings (afwd, abkw, ecm, ...)
    seed: int | None
    status: str
    epochs_done: int
    epochs: int
    attempts: int = 0
    started_at: float | None = None      # the latest attempt's start
    epoch_seconds: float | None = None   # mean recorded epoch time
    val_acc1: float | None = None        # the latest epoch's


@dataclass
class Summary:
    total: int
    done: int
    counts: dict[str, int]
    running: list[TrialProgress] = field(default_factory=list)
    elapsed: float | None = None
    eta: float | None = None


def summarize(trials: Iterable[TrialProgress], done_statuses: tuple[str, ...], now: float,
              started_at: float | None, live: bool = True, slots: int | None = None
              ) -> Summary:
    """Counts by status, the running trials, elapsed since `started_at` and the ETA (only
    while `live`: a grid nobody runs has none). `slots`: how many trials run at once when
    enough are left (the most seen running, or max_concurrent), so that the ETA does not jump
    in the moment between one trial's end and the next one's start."""
    trials = list(trials)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    running = [t for t in trials if t.status == "running"]
    summary = Summary(len(trials), sum(n for s, n in counts.items() if s in done_statuses),
                      counts, running)
    if started_at is not None and live:
        summary.elapsed = max(0.0, now - started_at)
    if live:
        todo = sum(1 for t in trials if t.status in TO_RUN_STATUSES)
        summary.eta = grid_eta(trials, max(len(running), min(slots or 0, todo)))
    return summary


def seconds_per_epoch(epoch_times: list[float], started_at: float | None,
                      start_epoch: int, epochs_done: int, until: float | None) -> float | None:
    """A trial's pace: its attempt's wall time (from `started_at`, the attempt that began at
    `start_epoch`, until `until`: now, or when it ended) per epoch it trained; else the mean
    of its recorded epoch times; None with neither."""
    trained = epochs_done - start_epoch + 1 if start_epoch >= 1 else 0
    if _known(started_at) and until is not None and trained >= 1 and until > started_at:
        return (until - started_at) / trained
    return sum(epoch_times) / len(epoch_times) if epoch_times else None


def grid_eta(trials: list[TrialProgress], running: int) -> float | None:
    """Seconds until every pending or running trial is done, or None with no epoch timed."""
    timed = [t.epoch_seconds for t in trials if _known(t.epoch_seconds)]
    if not timed:
        return None
    mean = sum(timed) / len(timed)
    todo = [t for t in trials if t.status in TO_RUN_STATUSES]
    work = sum(remaining(t) * (t.epoch_seconds if _known(t.epoch_seconds) else mean)
               for t in todo)
    longest = max((trial_eta(t) or 0.0 for t in todo if t.status == "running"), default=0.0)
    return max(work / max(1, running), longest)


def trial_eta(t: TrialProgress) -> float | None:
    return remaining(t) * t.epoch_seconds if _known(t.epoch_seconds) else None


def remaining(t: TrialProgress) -> int:
    return max(0, int(t.epochs) - int(t.epochs_done))


def _known(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value >= 0


def format_duration(seconds: float | None) -> str:
    """'45s', '3m05s', '2h07m', '3d04h'; '-' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def summary_line(summary: Summary, done_statuses: tuple[str, ...]) -> str:
    """'5/8 done (4 completed, 1 diverged), 2 running, 1 pending; elapsed 3m12s, ETA 1m40s'."""
    done = [f"{n} {s}" for s, n in sorted(summary.counts.items()) if s in done_statuses]
    line = f"{summary.done}/{summary.total} done"
    if len(done) > 1:
        line += f" ({', '.join(done)})"
    rest = [f"{summary.counts[s]} {s}" for s in ("running", "pending", "failed", "stopped")
            if summary.counts.get(s) and s not in done_statuses]
    if rest:
        line += ", " + ", ".join(rest)
    if summary.elapsed is not None or summary.eta is not None:
        line += (f"; elapsed {format_duration(summary.elapsed)}, "
                 f"ETA {format_duration(summary.eta)}")
    return line
