"""The trainer's allocator tuning: an Online Norm training step stops page-faulting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Minor page faults per forward+backward of one OnlineNorm2d layer, after a warm-up. Each run
# is a fresh process: the thresholds are process-wide and cannot be unset. (A few steps tell
# the two apart: without the tuning every step faults well over a hundred times.)
FAULTS_PER_STEP = """
import resource, sys, torch
from trainers.allocator import retain_freed_memory
tuned = retain_freed_memory()
import norms
torch.manual_seed(0)
x = torch.randn(128, 64, 8, 8, requires_grad=True)
grad = torch.randn_like(x)
layer = norms.build_norm("online", 64, ecm="ls").train()
def step():
    x.grad = None
    layer(x).backward(grad)
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


# Whether the tuning applies, alone: without torch, which the opt-out never needs.
TUNED = "from trainers.allocator import retain_freed_memory; print(retain_freed_memory())"


def _fresh_process(code: str, env: dict[str, str]) -> list[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                          capture_output=True, text=True, env={**os.environ, **env}).stdout.split()


def faults_per_step(**env: str) -> tuple[bool, float]:
    tuned, faults = _fresh_process(FAULTS_PER_STEP, env)
    return tuned == "True", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retained_memory_stops_page_faults() -> None:
    tuned, faults = faults_per_step(ONORM_SYSTEM_MALLOC="0")
    assert tuned
    # Without it this step re-faults its fresh 2 MB outputs, 4 KB at a time: 230 to 290
    # faults a step on the development machine, against 0.4 to 10 with it.
    assert faults < 50


def test_opt_out_keeps_the_c_library_defaults() -> None:
    assert _fresh_process(TUNED, {"ONORM_SYSTEM_MALLOC": "1"}) == ["False"]
