"""Makes starting or joining Ray fail in this process and in every Python process it starts.

Used only by `ONORM_TESTS_FORBID_RAY=1 pytest -m "not slow and not ray"` (tests/conftest.py
puts this folder first on PYTHONPATH): the check that no test outside the `ray` marker starts
Ray, in pytest itself or in an `onorm run` subprocess. Every way into a Ray cluster (a local
`ray.init`, `ray.init(address=...)`, `ray start`) builds a `ray._private.node.Node`, so its
constructor is the one place to stop. Each attempt is also appended to the file named by
ONORM_TESTS_RAY_STARTS with the test pytest was running (PYTEST_CURRENT_TEST is inherited by
subprocesses), since a subprocess's failure may be one its test expected for another reason.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

_TARGET = "ray._private.node"


def _forbid(node_module) -> None:
    def refuse(self, *args, **kwargs):
        log = os.environ.get("ONORM_TESTS_RAY_STARTS")
        if log:
            with open(log, "a") as f:
                f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?')}\t{os.getpid()}\t"
                        f"{' '.join(sys.argv)[:200]}\n")
        raise RuntimeError("a test outside the `ray` marker started Ray "
                           "(ONORM_TESTS_FORBID_RAY is set)")
    node_module.Node.__init__ = refuse


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches ray._private.node right after it is executed, whoever imports it first."""

    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module):
            run(module)
            _forbid(module)
        loader.exec_module = exec_module
        return spec


def install() -> None:
    if _TARGET in sys.modules:
        _forbid(sys.modules[_TARGET])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


if os.environ.get("ONORM_TESTS_FORBID_RAY") == "1":
    install()
