"""Switches Triton's interpreter on for the Triton path's CPU cases (see tests/devices.py).

Triton decides between compiling and interpreting when a kernel is defined (and parts of
triton imported later check the setting again), so where no CUDA device is present
TRITON_INTERPRET=1 is set here, before any test imports the kernels, and stays set for the
session. Nothing else uses Triton there: the eager CPU path never imports it.
"""

from __future__ import annotations

import os

from devices import TRITON_INTERPRETER

if TRITON_INTERPRETER:
    os.environ["TRITON_INTERPRET"] = "1"
