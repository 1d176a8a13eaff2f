"""One writer per experiment folder: two runs of one experiment would each rewrite the
Parquet files from their own rows, dropping the other's, and train the same trials twice."""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
        with open(layout.lock, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"another run of {layout.name!r} is writing {layout.dir} (it "
                                f"holds {layout.lock}): wait for it to finish, or give this "
                                "one another --results folder") from None
            yield
    finally:
        if created and [p.name for p in layout.dir.iterdir()] == [layout.lock.name]:
            layout.lock.unlink()
            for folder in created:   # innermost first
                try:
                    folder.rmdir()
                except OSError:   # something else was put there meanwhile: keep it
                    break
