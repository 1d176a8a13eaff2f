"""Shared fixtures: one local Ray per test session, started only when a test asks for it;
an installed normalizer plugin."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def _ray_shutdown_at_end():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _shared_ray():
    import ray

    if not ray.is_initialized():
        os.environ.pop("RAY_ADDRESS", None)
        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
                 namespace="onorm", log_to_driver=False)
    return ray


@pytest.fixture
def ray_session(_ray_shutdown_at_end):
    """A local Ray (2 CPUs, 1 logical GPU, no dashboard), started once and reused.

    A test that needs its own Ray (a simulated cluster) uses `ray_exclusive` instead; the
    next test asking for this fixture then starts the shared one again.
    """
    return _shared_ray()


@pytest.fixture(scope="module")
def ray_module(_ray_shutdown_at_end):
    """The same shared Ray, for a module-scoped fixture that runs trials once for its tests."""
    return _shared_ray()


@pytest.fixture
def ray_exclusive(_ray_shutdown_at_end):
    """No Ray in this process while the test runs (it starts, and must stop, its own)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def norm_plugin(tmp_path_factory, monkeypatch):
    """The package of tests/norm_plugin.py installed for this test: on sys.path, and on
    PYTHONPATH for the processes it starts (a local Ray started after it, its workers)."""
    import importlib

    from norm_plugin import install_plugin

    root = install_plugin(tmp_path_factory.mktemp("site"))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
    importlib.invalidate_caches()
    yield root
    import sys

    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]
