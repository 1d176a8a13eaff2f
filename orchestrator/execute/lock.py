"""One writer per experiment folder: two runs of one experiment would each rewrite the
Parquet files from their own rows, dropping the other's, and train the same trials twice."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from orchestrator.layout import ExperimentLayout
from trainers.errors import UserError


@contextmanager
def experiment_lock(exp_dir: Path) -> Iterator[None]:
    """Hold the experiment folder's lock while the block runs; a UserError if another
    process holds it.

    The OS releases the lock when its holder dies, even by SIGKILL, so a rerun after a crash
    is never refused. Folders this call created are removed again if the block wrote
    nothing into them (a run refused before it started leaves nothing behind).
    """
    layout = ExperimentLayout(Path(exp_dir))
    created = [p for p in (layout.dir, *layout.dir.parents) if not p.exists()]
    layout.dir.mkdir(parents=True, exist_ok=True)
    try:
        # "a": never truncate here, the holder's line is read by `onorm status`
        with open(layout.lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"another run of {layout.name!r} is writing {layout.dir} (it "
                                f"holds {layout.lock}): wait for it to finish, or give this "
                                "one another --results folder") from None
            _write_holder(handle)
            try:
                yield
            finally:
                handle.truncate(0)   # no run holds it now
    finally:
        if created and [p.name for p in layout.dir.iterdir()] == [layout.lock.name]:
            layout.lock.unlink()
            for folder in created:   # innermost first
                try:
                    folder.rmdir()
                except OSError:   # something else was put there meanwhile: keep it
                    break


def _write_holder(handle) -> None:
    handle.truncate(0)
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started_at": time.time(), "argv": sys.argv}) + "\n")
    handle.flush()


def lock_holder(exp_dir: Path) -> dict[str, Any] | None:
    """The run writing this folder ({pid, host, started_at, argv}) or None, read without
    taking the lock. A holder on this host is checked by its pid (one killed by SIGKILL left
    its line behind); one on another host is taken at its word, with `remote` set."""
    try:
        holder = json.loads(ExperimentLayout(Path(exp_dir)).lock.read_text() or "null")
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        return None
    if holder.get("host") != socket.gethostname():
        return {**holder, "remote": True}
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return None
    except PermissionError:   # alive, another user's
        pass
    started = _process_start(holder["pid"])
    if started is not None and started > float(holder.get("started_at") or 0) + 5:
        return None   # the pid was reused by a process that started after the lock was taken
    return holder


def _process_start(pid: int) -> float | None:
    """When process `pid` started (Linux's /proc), or None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return None
