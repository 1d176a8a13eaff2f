"""One writer per experiment folder: two runs of one experiment would each rewrite the
Parquet files from their own rows, dropping the other's, and train the same trials twice.

A local (or NFS) folder is locked with flock, which the OS releases when its holder dies.
An object store has no locks, so there the folder's `.lock` object is a *lease*: its holder
(a random token, pid, host, start) and a heartbeat the holder rewrites every third of the
lease. Another driver respects a lease whose heartbeat is fresh and takes over a stale one,
so a SIGKILLed driver blocks the next for at most the lease (ONORM_LEASE_SECONDS, default
60). An object store has no compare-and-swap here: a driver that wrote the lease reads it
back after a moment and goes ahead only if it still names it, so of two drivers starting at
the same instant one steps back.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from orchestrator import storage
from orchestrator.layout import ExperimentLayout
from orchestrator.storage import Location, UriPath
from trainers.errors import UserError

DEFAULT_LEASE_S = 60.0


def lease_seconds() -> float:
    """How long a lease's heartbeat stays fresh (ONORM_LEASE_SECONDS)."""
    try:
        value = float(os.environ.get("ONORM_LEASE_SECONDS", DEFAULT_LEASE_S))
    except ValueError:
        value = DEFAULT_LEASE_S
    return value if value > 0 else DEFAULT_LEASE_S


@contextmanager
def experiment_lock(exp_dir: Location) -> Iterator[None]:
    """Hold the experiment folder's lock (local) or lease (object store) while the block
    runs; a UserError if another run holds it."""
    if isinstance(exp_dir, UriPath):
        with _lease(ExperimentLayout(exp_dir)):
            yield
        return
    with _flock(Path(exp_dir)):
        yield


@contextmanager
def _flock(exp_dir: Path) -> Iterator[None]:
    """flock the local folder's .lock while the block runs; a UserError if another
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


def _holder_record(token: str) -> dict[str, Any]:
    now = time.time()
    return {"holder": token, "pid": os.getpid(), "host": socket.gethostname(),
            "started_at": now, "heartbeat": now, "argv": sys.argv}


def _read_lease(layout: ExperimentLayout) -> dict[str, Any] | None:
    try:
        lease = json.loads(storage.read_text(layout.lock) or "null")
    except (OSError, ValueError):
        return None
    return lease if isinstance(lease, dict) else None


def _fresh(lease: dict[str, Any] | None, now: float) -> bool:
    beat = lease.get("heartbeat") if lease else None
    return isinstance(beat, (int, float)) and now - beat < lease_seconds()


@contextmanager
def _lease(layout: ExperimentLayout) -> Iterator[None]:
    """Hold the folder's lease object while the block runs, renewing its heartbeat from a
    thread; it is deleted when the block ends."""
    held = _read_lease(layout)
    if _fresh(held, time.time()):
        raise _busy(layout, held)
    token = secrets.token_hex(8)
    record = _holder_record(token)
    storage.write_text(layout.lock, json.dumps(record))
    time.sleep(min(1.0, lease_seconds() / 10))   # let a racing writer's PUT land first
    now_held = _read_lease(layout)
    if not now_held or now_held.get("holder") != token:
        raise _busy(layout, now_held)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_seconds() / 3):
            try:
                storage.write_text(layout.lock, json.dumps({**record,
                                                            "heartbeat": time.time()}))
            except Exception:   # a blip of the store: the next beat tries again
                pass

    beat = threading.Thread(target=renew, name="onorm-lease", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        current = _read_lease(layout)
        if current is None or current.get("holder") == token:
            storage.remove(layout.lock)


def _busy(layout: ExperimentLayout, holder: dict[str, Any] | None) -> UserError:
    who = (f" (pid {holder.get('pid')} on {holder.get('host')}, last heartbeat "
           f"{time.time() - float(holder.get('heartbeat') or 0):.0f} s ago)" if holder else "")
    return UserError(f"another run of {layout.name!r} is writing {layout.dir}{who}: wait for "
                     f"it to finish (a lease left by a killed run expires "
                     f"{lease_seconds():g} s after its last heartbeat), or give this one "
                     "another --results folder")


def lock_holder(exp_dir: Location) -> dict[str, Any] | None:
    """The run writing this folder ({pid, host, started_at, argv}) or None, read without
    taking the lock. A holder on this host is checked by its pid (one killed by SIGKILL left
    its line behind); one on another host is taken at its word, with `remote` set. On an
    object store, a lease is held while its heartbeat is fresh."""
    if isinstance(exp_dir, UriPath):
        lease = _read_lease(ExperimentLayout(exp_dir))
        if not _fresh(lease, time.time()):
            return None
        return {**lease, "remote": lease.get("host") != socket.gethostname()}
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
