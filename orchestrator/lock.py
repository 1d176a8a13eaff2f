"""One writer per experiment folder: two runs of one experiment would each rewrite the
Parquet files from their own rows, dropping the other's, and train the same trials twice."""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from trainers.errors import UserError

LOCK_NAME = ".lock"


@contextmanager
def experiment_lock(exp_dir: Path) -> Iterator[None]:
    """Hold exp_dir/.lock while the block runs; a UserError if another process holds it.

    The OS releases the lock when its holder dies, even by SIGKILL, so a rerun after a crash
    is never refused.
    """
    exp_dir.mkdir(parents=True, exist_ok=True)
    with open(exp_dir / LOCK_NAME, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another run of {exp_dir.name!r} is writing {exp_dir} (it holds "
                            f"{exp_dir / LOCK_NAME}): wait for it to finish, or give this one "
                            "another --results folder") from None
        yield
