"""Helpers for the orchestrator tests: tiny trials (synthetic CIFAR of 128/64 images, ResNet-8),
experiments files, an `onorm run` driver process, recorder rows.

Results folders with known curves are in table_fixtures.py, simulated clusters in
ray_nodes.py; fixtures in conftest.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pandas as pd
import psutil

from orchestrator.execute.attempt import WORKER_DEATHS_VAR
from orchestrator.plan.trials import TrialSpec, make_trial
from trainers.config import make_config
from trainers.data.synthetic import ensure_synthetic_cifar

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = {"n_train": 128, "n_test": 64}
TINY_SETTINGS = dict(depth=8, batch_size=64, lr_milestones=(2,), workers=0, device="cpu")
PROV = {"git_commit": "abc", "package_versions": "{}"}   # a recorder's provenance
# one tiny grid as the malformed-input tests start from (2 batch-norm seeds)
GOOD = """\
tiny:
  dataset: cifar10
  data_dir: data
  synthetic: {n_train: 128, n_test: 64}
  resources: {cpu: 1, gpu: 0}
  settings: {depth: 8, epochs: 3, batch_size: 64, workers: 0, device: cpu}
  cells:
    - {norm: batch, seeds: 2}
"""


def epoch(e: int, acc: float, loss: float = 1.0) -> dict:
    """One epoch's metrics row as a trial reports it."""
    return {"epoch": e, "lr": 0.1, "train_loss": loss, "train_acc1": acc, "train_acc5": acc,
            "val_loss": loss, "val_acc1": acc, "val_acc5": acc, "epoch_time_s": 1.0,
            "images_per_s": 10.0}


def tiny_trial(data_dir: Path, norm: str = "batch", seed: int = 0, epochs: int = 3,
               resources: dict[str, float] | None = None) -> TrialSpec:
    ensure_synthetic_cifar(data_dir, "cifar10", SYNTHETIC)
    config = make_config("cifar10", str(data_dir), norm=norm, seed=seed, epochs=epochs,
                         **TINY_SETTINGS)
    return make_trial(config, resources or {"cpu": 1.0, "gpu": 0.0}, SYNTHETIC)


@contextmanager
def worker_dies(trials: list[TrialSpec], after_epoch: int):
    """Within the block, the worker of each of `trials` exits as a lost one does (os._exit)
    after `after_epoch` of the trial's first attempt: one plan file per trial in the folder
    tests/conftest.py names in $ONORM_TEST_WORKER_DEATHS before any Ray starts."""
    plans = [Path(os.environ[WORKER_DEATHS_VAR]) / t.trial_id for t in trials]
    for plan in plans:
        plan.write_text(str(after_epoch))
    try:
        yield
    finally:
        for plan in plans:
            plan.unlink(missing_ok=True)


def tensorboard_scalars(folder: Path) -> list[tuple[int, dict[str, float]]]:
    """A run folder's scalars as TensorBoard itself loads them (its EventAccumulator, which
    drops what a later file's purge marker purges): (step, {tag: value}) per event, in order;
    a step logged twice is there twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    series = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    out: list[tuple[int, dict[str, float]]] = []
    for i in range(max((len(s) for s in series.values()), default=0)):
        at = {tag: s[i] for tag, s in series.items() if i < len(s)}
        steps = {e.step for e in at.values()}
        assert len(steps) == 1, f"{folder}: the tags' {i}th values are of steps {steps}"
        out.append((steps.pop(), {tag: e.value for tag, e in at.items()}))
    return out


def tiny_yaml(path: Path, body: str | None = None) -> Path:
    """An experiments file with one tiny grid `tiny` (or `body` verbatim)."""
    path.write_text(body if body is not None else """
tiny:
  dataset: cifar10
  data_dir: data
  synthetic: {n_train: 128, n_test: 64}
  resources: {cpu: 1, gpu: 0}
  settings: {depth: 8, epochs: 3, batch_size: 64, lr_milestones: [2], workers: 0, device: cpu}
  cells:
    - {norm: batch, seeds: 2}
    - {norm: online, afwd: "1023/1024", abkw: "127/128", seeds: 1}
""")
    return path


def driver(config: Path, experiment: str, results: Path, log: Path,
           new_session: bool = False) -> subprocess.Popen:
    """`onorm run EXPERIMENT` in a process of its own (with its own local Ray), logged.
    new_session: the driver leads a process group of its own, which a test can signal
    whole as a terminal's Ctrl-C does (os.killpg(proc.pid, ...))."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "run", experiment, "--config",
             str(config), "--results", str(results)], cwd=REPO, env=env, stdout=f,
            stderr=subprocess.STDOUT, start_new_session=new_session)



def run_to_the_end(config: Path, experiment: str, results: Path, log: Path,
                   timeout: float = 300) -> str:
    """`onorm run` (driver()) waited for; fails the test unless it exits 0; its log."""
    proc = driver(config, experiment, results, log)
    try:
        assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    return log.read_text()


def interrupt(proc: subprocess.Popen, log: Path, trials_path: Path, ready,
              send: Callable[[], None], exit_code: int) -> pd.DataFrame:
    """Once `ready(rows)` holds, interrupt the driver with `send()` and check that it stops
    as Ctrl-C stops it: exit `exit_code`, the resume hint, no traceback. The rows that were
    ready."""
    try:
        rows = wait_for_trials(proc, log, trials_path, ready)
        send()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    out = log.read_text()
    assert code == exit_code, out[-3000:]
    assert "onorm run: interrupted; re-run the same command to resume" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    return rows

def read_trials(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_parquet(path).set_index("trial_id")
    except (FileNotFoundError, OSError):
        return None


def wait_for_trials(proc: subprocess.Popen, log: Path, trials_path: Path, ready,
                    timeout: float = 240) -> pd.DataFrame:
    """Poll trials.parquet until `ready(rows)` holds, while the driver is alive; its rows then.
    A driver that exits or takes too long fails the test with the tail of its log."""
    deadline = time.time() + timeout
    while True:
        assert time.time() < deadline, log.read_text()[-3000:]
        assert proc.poll() is None, log.read_text()[-3000:]
        rows = read_trials(trials_path)
        if rows is not None and ready(rows):
            return rows
        time.sleep(0.2)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver, then every Ray process it started (by pid, found beforehand)."""
    tree = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for p in list(tree):
        try:
            tree.extend(p.children(recursive=True))  # workers forked since the snapshot
        except psutil.Error:
            pass
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(tree, timeout=30)
