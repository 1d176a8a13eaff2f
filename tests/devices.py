"""The devices a test runs on: the CPU always, CUDA where a device is present (else skipped)."""

from __future__ import annotations

import pytest
import torch

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                     reason="no CUDA device"))
DEVICES = ["cpu", CUDA]
