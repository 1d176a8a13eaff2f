"""Keep freed memory inside the process, so per-step tensors stop page-faulting (glibc only).

glibc returns freed heap memory to the OS once more than a few MB sit free at the top of the
heap, and serves blocks above a threshold straight from mmap. A training step frees and
reallocates the same activation-sized blocks every iteration, so with those defaults many of
them come back as fresh pages, and writing each 4 KB page costs a page fault: on the 2-core
CPU used for development that was a fifth to a third of an Online Normalization layer's time at
(128, 64, 8, 8). Raising both thresholds keeps the process's peak heap mapped instead (as
jemalloc or tcmalloc would), which is what a long training job wants.
Set ONORM_SYSTEM_MALLOC=1 to keep the C library's defaults.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 1 << 30     # free heap kept before any is returned to the OS
MMAP_THRESHOLD = 64 << 20    # blocks below this come from the heap, so they are reused

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds once per process; True if they are raised."""
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
    return _applied


def _set_thresholds() -> bool:
    if os.environ.get("ONORM_SYSTEM_MALLOC", "") not in ("", "0"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):   # musl and other C libraries: nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
