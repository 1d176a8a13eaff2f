"""Files replaced atomically: a reader sees the old file or the new one, never half of one.

Used for every result the project writes (metrics, trial tables, checkpoints, reports), so
a crash or a SIGKILL mid-write never leaves a truncated file behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def replace_atomically(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(temporary path) beside `path`, then move the result onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for reading
        os.replace(tmp, path)  # atomic within one filesystem: tmp is in the same folder
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_durably(path: str | Path, data: bytes) -> None:
    """`data` to `path` atomically, flushed to disk before it replaces the old file."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    replace_atomically(path, write)


def write_text_atomically(path: str | Path, text: str) -> None:
    """`text` to `path` (UTF-8) atomically."""
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def move_aside(path: str | Path) -> Path:
    """Rename a damaged file to `<name>.damaged-<time>` beside it (never over an earlier
    one) and return the new path: what was damaged is kept for inspection, never deleted."""
    import time

    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    os.replace(path, target)
    return target
