"""A live bar for one epoch's batches (rich, on stderr); nothing when the bar is off."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


class _Silent:
    def update(self, done: int, text: str) -> None:
        pass

    def advance(self, done: int) -> None:
        pass


class _RichBar:
    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def update(self, done: int, text: str) -> None:
        self._progress.update(self._task, completed=done, stats=text)

    def advance(self, done: int) -> None:
        """Move the bar, keeping the last statistics shown."""
        self._progress.update(self._task, completed=done)


@contextmanager
def epoch_bar(enabled: bool, title: str, total: int) -> Iterator[_Silent | _RichBar]:
    """Yield an object with update(done, text) and advance(done); a transient bar on stderr
    when enabled."""
    if not enabled:
        yield _Silent()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[stats]}"),
                        console=Console(file=sys.stderr), transient=True)
    with progress:
        yield _RichBar(progress, progress.add_task(title, total=total, stats=""))


def bar_by_default() -> bool:
    """Show the bar when a person is watching: stderr is a terminal."""
    return sys.stderr.isatty()

