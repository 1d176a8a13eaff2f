"""Shared fixtures: one local Ray per test session, started only when a test asks for it;
an installed normalizer plugin. The `ray` marker, and the check that nothing else starts Ray.

`pytest -m "not slow and not ray"` is the inner loop. A test that starts Ray (in pytest or
in a subprocess) carries the `ray` marker: explicitly, or through the Ray fixtures below,
which add it. `ONORM_TESTS_FORBID_RAY=1 pytest -m "not slow and not ray"` checks that:
Ray refuses to start in every process (tests/forbid_ray/sitecustomize.py), and the session
fails naming each test that tried.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from orchestrator.execute.attempt import WORKER_DEATHS_VAR

# Every fixture that starts Ray (ray_session, ray_module, ray_exclusive, test_results_s3.py's
# s3_ray) asks for this one, which stops Ray at the end: a test that reaches it starts Ray.
RAY_FIXTURES = {"_ray_shutdown_at_end"}
_FORBID_DIR = Path(__file__).parent / "forbid_ray"


def pytest_configure(config):
    # before any Ray starts, so that every Ray worker sees it: the folder where a test plans a
    # worker's death (orch_helpers.worker_dies; read by execute/attempt.py's exit_if_planned)
    config._worker_deaths = tempfile.mkdtemp(prefix="onorm-worker-deaths-")
    os.environ[WORKER_DEATHS_VAR] = config._worker_deaths
    if os.environ.get("ONORM_TESTS_FORBID_RAY") != "1":
        return
    # subprocesses (an `onorm run`, `ray start`) load the same refusal through PYTHONPATH
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_FORBID_DIR), os.environ.get("PYTHONPATH")) if p)
    if not os.environ.get("ONORM_TESTS_RAY_STARTS"):
        fd, log = tempfile.mkstemp(prefix="onorm-ray-starts-", suffix=".tsv")
        os.close(fd)
        os.environ["ONORM_TESTS_RAY_STARTS"] = log
        config._ray_starts_created = log   # removed at the end of the session
    import importlib.util
    spec = importlib.util.spec_from_file_location("_forbid_ray", _FORBID_DIR / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # installs the refusal in this process too


def pytest_collection_modifyitems(items):
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


def pytest_sessionfinish(session):
    shutil.rmtree(getattr(session.config, "_worker_deaths", ""), ignore_errors=True)
    log = os.environ.get("ONORM_TESTS_RAY_STARTS")
    if os.environ.get("ONORM_TESTS_FORBID_RAY") != "1" or not log or not os.path.exists(log):
        return
    starts = Path(log).read_text().splitlines()
    if getattr(session.config, "_ray_starts_created", None) == log:
        os.unlink(log)
    if starts:
        session.config.get_terminal_writer().line(
            "Ray was started with ONORM_TESTS_FORBID_RAY=1 (run it with -m \"not ray\"; a test "
            "listed here outside the `ray` marker needs it):\n" + "\n".join(starts), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
