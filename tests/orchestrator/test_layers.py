"""The orchestrator's layers import one way: cli -> execute -> report -> plan (and layout)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("plan", "report", "execute", "cli")   # each may import only those before it


def modules_after_import(package: str) -> set[str]:
    """Every module loaded by importing `package` and all its submodules, in a fresh
    interpreter (so nothing imported by other tests counts)."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"pkg = importlib.import_module({package!r})\n"
        "for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
        "    if info.name.endswith('__main__'): continue\n"
        "    importlib.import_module(info.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_no_layer_above_it(layer):
    loaded = modules_after_import(f"orchestrator.{layer}")
    above = LAYERS[LAYERS.index(layer) + 1:]
    for other in above:
        assert not any(m.startswith(f"orchestrator.{other}") for m in loaded), other


def test_reports_need_neither_ray_nor_torch():
    loaded = modules_after_import("orchestrator.report")
    assert "orchestrator.report.table" in loaded and "orchestrator.report.plot" in loaded
    for heavy in ("ray", "torch"):
        assert heavy not in loaded
    assert not any(m.startswith("orchestrator.execute") for m in loaded)
