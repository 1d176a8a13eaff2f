"""The live view of a run on stderr: a rich table on a terminal, one line per event otherwise."""

from __future__ import annotations

import sys
from typing import Any

from orchestrator.plan.trials import describe_options

STYLE = {"completed": "green", "running": "cyan", "failed": "red", "diverged": "yellow",
         "stopped": "magenta", "pending": "dim"}


class LiveView:
    """Receives the recorder's change events; start()/stop() bracket the run."""

    def __init__(self, title: str, tty: bool | None = None):
        self.title = title
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.live = None

    def start(self, recorder) -> None:
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self.render(recorder), console=Console(stderr=True),
                             refresh_per_second=2, transient=False)
            self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def __call__(self, recorder, message: str) -> None:
        if self.live is not None:
            self.live.update(self.render(recorder))
        else:
            print(f"[{self.title}] {message}", file=sys.stderr, flush=True)

    def render(self, recorder) -> Any:
        from rich.table import Table

        table = Table(title=self.title, title_justify="left")
        for col in ("trial", "norm", "options", "seed", "state", "epoch", "val acc1", "tries"):
            table.add_column(col, no_wrap=col != "options")
        for trial_id, spec in recorder.specs.items():
            row = recorder.rows[trial_id]
            status = row["status"]
            last = recorder.metrics.get((trial_id, int(row["epochs_done"])))
            acc_text = f"{last['val_acc1']:.2f}" if last else "-"
            options = (describe_options(spec.config).replace("afwd=", "a=").replace("abkw=", "b=")
                       .replace("ecm=", ""))
            table.add_row(trial_id, spec.config.norm, options,
                          str(spec.config.seed), f"[{STYLE.get(status, '')}]{status}[/]",
                          f"{row['epochs_done']}/{row['epochs']}", acc_text,
                          str(row["attempts"]))
        return table
