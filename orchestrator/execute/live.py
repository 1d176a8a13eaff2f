"""The live view of a run on stderr: a rich table on a terminal, one line per event otherwise.

Both say how far the grid has got (done / total, elapsed, ETA: report/grid_progress.py). The table
keeps to the terminal: the summary line first, then as many trials as fit (all of them in
plan order when they fit; otherwise the running ones first and a line counting the rest),
with decay factors as 1023/1024, or k=10/7 in a narrow terminal.
"""

from __future__ import annotations

import io
import math
import sys
import time
from typing import Any

from norms.modes import options_of
from orchestrator.report.grid_progress import (
    TrialProgress,
    format_duration,
    seconds_per_epoch,
    summarize,
    summary_line,
    trial_eta,
)
from orchestrator.report.option_labels import NARROW_COLUMNS, compact_options

STYLE = {"completed": "green", "running": "cyan", "failed": "red", "diverged": "yellow",
         "stopped": "magenta", "pending": "dim"}
# lines of the view besides the summary and the trial rows: the table's header, and one
# spare so that the cursor's line never scrolls it (fit_rows keeps one for the rest's count)
FIXED_LINES = 2


class LiveView:
    """Receives the recorder's change events; start()/stop() bracket the run."""

    def __init__(self, title: str, tty: bool | None = None, console: Any = None):
        self.title = title
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.console = console
        self.live = None
        self._last: Any = None
        self.started_at: float | None = None   # the run's start (run_trials sets it)
        self.peak = 0   # the most trials seen running at once

    def start(self, recorder) -> None:
        self.started_at = self.started_at or time.time()
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self.console = self.console or Console(stderr=True)
            self._last = self.render(recorder)
            # redrawn twice a second (the elapsed time moves between events too)
            self.live = Live(console=self.console, refresh_per_second=2, transient=False,
                             get_renderable=lambda: self._redraw(recorder))
            self.live.start()

    def _redraw(self, recorder) -> Any:
        """From Live's refresh thread, while Tune's callbacks change the recorder: a
        change in mid-render keeps the previous picture for half a second."""
        try:
            self._last = self.render(recorder)
        except RuntimeError:   # a dict changed size while it was read
            pass
        return self._last

    def stop(self, recorder=None) -> None:
        """End the view; with `recorder`, its final state is what stays on the screen."""
        if self.live is not None:
            if recorder is not None:
                self._last = self.render(recorder)
            self.live.stop()
            self.live = None

    def __call__(self, recorder, message: str) -> None:
        if self.live is not None:
            self.live.refresh()
        else:
            summary = self.summary(recorder)
            print(f"[{self.title}] {message} [{summary_line(summary, recorder.skip_statuses)}]",
                  file=sys.stderr, flush=True)

    def summary(self, recorder, trials=None):
        trials = progress_of(recorder) if trials is None else trials
        self.peak = max(self.peak, sum(1 for t in trials if t.status == "running"))
        return summarize(trials, recorder.skip_statuses, time.time(), self.started_at,
                         slots=self.peak)

    def render(self, recorder, width: int | None = None, height: int | None = None) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        if width is None or height is None:
            from rich.console import Console

            size = (self.console or Console(stderr=True)).size
            width, height = width or size.width, height or size.height
        narrow = width < NARROW_COLUMNS
        trials = progress_of(recorder)
        summary = self.summary(recorder, trials)
        head = Text(f"{self.title}: {summary_line(summary, recorder.skip_statuses)}",
                    style="bold")
        head_lines = len(head.wrap(_Console(width), width))   # wraps in a narrow terminal
        shown, left_out = fit_rows(trials, max(1, height - FIXED_LINES - head_lines))
        table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
        columns = ["trial", "norm", "options", "seed", "state", "epoch", "val acc1", "ETA",
                   "tries"]
        if narrow:
            columns = [c for c in columns if c not in ("val acc1", "tries")]
        keep = {"trial": 12, "norm": 6, "state": 9, "epoch": 5}   # never squeezed below these
        for col in columns:
            table.add_column(col, no_wrap=True, overflow="ellipsis", min_width=keep.get(col))
        for t in shown:
            acc = f"{t.val_acc1:.2f}" if t.val_acc1 is not None else "-"
            eta = format_duration(trial_eta(t)) if t.status == "running" else ""
            cells = {"trial": t.trial_id, "norm": t.norm,
                     "options": compact_options(t.norm, t.options, narrow),
                     "seed": "-" if t.seed is None else str(t.seed),
                     "state": f"[{STYLE.get(t.status, '')}]{t.status}[/]",
                     "epoch": f"{t.epochs_done}/{t.epochs}", "val acc1": acc, "ETA": eta,
                     "tries": str(t.attempts)}
            table.add_row(*(cells[c] for c in columns))
        parts: list[Any] = [head, table]
        if left_out:
            counts: dict[str, int] = {}
            for t in left_out:
                counts[t.status] = counts.get(t.status, 0) + 1
            parts.append(Text(f"... {len(left_out)} more: "
                              + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
                              style="dim", overflow="ellipsis", no_wrap=True))
        return Group(*parts)


def _Console(width: int):
    from rich.console import Console

    return Console(width=width, file=io.StringIO())


def fit_rows(trials: list[TrialProgress], rows: int
             ) -> tuple[list[TrialProgress], list[TrialProgress]]:
    """(shown, left out): every trial in plan order when they fit in `rows`, else the
    running ones first, then failed, then the rest in plan order."""
    if len(trials) <= rows:
        return trials, []
    rows = max(1, rows - 1)   # the line that counts the rest
    rank = {"running": 0, "failed": 1}
    ordered = sorted(trials, key=lambda t: rank.get(t.status, 2))   # stable: plan order
    return ordered[:rows], ordered[rows:]


def progress_of(recorder, now: float | None = None) -> list[TrialProgress]:
    """The plan's trials as the recorder holds them now."""
    now = time.time() if now is None else now
    times: dict[str, list[float]] = {}
    last: dict[str, tuple[int, float]] = {}
    for (trial_id, epoch), m in list(recorder.metrics.items()):
        if trial_id not in recorder.specs:
            continue
        seconds = m.get("epoch_time_s")
        if seconds is not None and math.isfinite(seconds):
            times.setdefault(trial_id, []).append(float(seconds))
        if epoch >= last.get(trial_id, (0, 0.0))[0]:
            last[trial_id] = (epoch, m.get("val_acc1"))
    out = []
    for trial_id, spec in recorder.specs.items():
        row, c = recorder.rows[trial_id], spec.config
        acc = last.get(trial_id, (0, None))[1]
        started = row.get("started_at")
        started = float(started) if started is not None and math.isfinite(started) else None
        until = now if row["status"] == "running" else row.get("updated_at")
        pace = seconds_per_epoch(times.get(trial_id, []), started, int(row["start_epoch"]),
                                 int(row["epochs_done"]), until)
        out.append(TrialProgress(
            trial_id, c.norm, {k: getattr(c, k) for k in options_of(c.norm)}, c.seed,
            row["status"], int(row["epochs_done"]), int(row["epochs"]), int(row["attempts"]),
            started, pace, acc if acc is not None and math.isfinite(acc) else None))
    return out
