"""The devices a test runs on: the CPU always, CUDA where a device is present (else skipped).

The Triton path runs compiled on CUDA and, where no CUDA device is present, in Triton's
interpreter on CPU tensors (tests/norms/conftest.py switches the interpreter on before the
kernels are first imported; the interpreter is process-wide, so a GPU machine runs only the
compiled CUDA cases).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                     reason="no CUDA device"))
DEVICES = ["cpu", CUDA]

TRITON = importlib.util.find_spec("triton") is not None
TRITON_INTERPRETER = TRITON and not torch.cuda.is_available()
TRITON_DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(
        not TRITON_INTERPRETER, reason="Triton on CPU tensors: only in its interpreter, "
        "which runs where no CUDA device is (and triton is installed)")),
    pytest.param("cuda", marks=pytest.mark.skipif(
        not (TRITON and torch.cuda.is_available()), reason="no CUDA device (or no triton)")),
]
