"""SIGTERM takes Ctrl-C's path: `ray job stop`, Kubernetes and batch schedulers end a driver
with SIGTERM, and it should then stop like an interrupted run (running trials back to
pending, the record flushed, the resume hint), exiting 143 (128 + SIGTERM) instead of 130.

`ray.init` replaces the process's SIGTERM handler with its own (which exits at once), so the
runner installs this one again after joining or starting Ray.
"""

from __future__ import annotations

import signal
import threading

EXIT_TERMINATED = 128 + signal.SIGTERM
_terminated = threading.Event()


def _as_ctrl_c(signum, frame) -> None:
    _terminated.set()
    # whatever Ctrl-C would do now: Tune's handler while a Tuner runs (stop the trials and
    # return), else the default one (KeyboardInterrupt). Calling it directly rather than
    # sending SIGINT matters: Ray's job supervisor starts the entrypoint with SIGINT blocked.
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def take_sigterm_as_ctrl_c() -> None:
    """Install the handler (only the main thread may)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _as_ctrl_c)


def terminated() -> bool:
    """A SIGTERM arrived in this process."""
    return _terminated.is_set()
