"""`onorm run` submitted as a Ray job (the documented way onto a cluster, docs/cluster.md):
it succeeds, a resubmission skips what is done, killing the submitting command leaves the
job running, `ray job stop` (SIGTERM) leaves its trials pending and a resubmission resumes
them. A head node with Ray's dashboard (the job server; needs ray[default]) and token
authentication, started by process id under its own RAY_TMPDIR."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from orch_helpers import read_trials
from ray_nodes import ONORM, RAY, RayNodes

pytest.importorskip("aiohttp", reason="ray job submit needs ray[default] (the test extra)")

GRID = """
{name}:
  dataset: cifar10
  data_dir: {data}
  synthetic: {{n_train: 128, n_test: 64}}
  resources: {{cpu: 1, gpu: 0}}
  settings: {{depth: 8, epochs: {epochs}, batch_size: 64, workers: 0, device: cpu}}
  cells:
    - {{norm: batch, seeds: 2}}
"""

pytestmark = [pytest.mark.slow, pytest.mark.ray]   # a `ray start` cluster


@pytest.fixture(scope="module")
def head():
    nodes = RayNodes()
    try:
        # a stopped job's driver gets SIGTERM, then SIGKILL after this many seconds (Ray's
        # default is 3): time to put its running trials back to pending
        nodes.start("head", "--num-cpus", "2", "--num-gpus", "0", head=True, dashboard=True,
                    env={"RAY_JOB_STOP_WAIT_TIME_S": "60"})
        nodes.wait_for(1)
        yield nodes
    finally:
        nodes.shutdown()


def submit(nodes: RayNodes, folder, experiment: str, *extra: str, wait: bool = True):
    """`ray job submit --working-dir FOLDER -- onorm run EXPERIMENT` with absolute results."""
    command = [RAY, "job", "submit", "--address", nodes.dashboard, "--working-dir",
               str(folder), *extra, "--", ONORM, "run", experiment, "--config", "e.yaml",
               "--results", str(folder.parent / "results")]
    if not wait:
        return subprocess.Popen(command, env=nodes.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    done = subprocess.run(command, env=nodes.env, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def job(nodes: RayNodes, *args: str) -> str:
    done = subprocess.run([RAY, "job", *args, "--address", nodes.dashboard], env=nodes.env,
                          capture_output=True, text=True, timeout=180)
    return done.stdout + done.stderr


def wait_until(check, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, what
        time.sleep(0.5)


def working_dir(tmp_path, name: str, epochs: int):
    folder = tmp_path / "wd"
    folder.mkdir(exist_ok=True)
    (folder / "e.yaml").write_text(GRID.format(name=name, data=tmp_path / "data",
                                               epochs=epochs))
    return folder


# about 60 s on 2 cores once the head is up
def test_a_submitted_grid_succeeds_and_a_resubmission_skips_what_is_done(head, tmp_path):
    folder = working_dir(tmp_path, "jobs", epochs=2)
    code, out = submit(head, folder, "jobs")
    assert code == 0 and "succeeded" in out, out[-3000:]
    assert "jobs: 2 trials: 2 completed" in out, out[-3000:]
    code, out = submit(head, folder, "jobs")
    assert code == 0 and out.count(" (completed)") == 2, out[-3000:]
    rows = read_trials(tmp_path / "results" / "jobs" / "trials.parquet")
    assert set(rows.status) == {"completed"} and set(rows.attempts) == {1}   # not rerun


# about 120 s on 2 cores
def test_the_job_outlives_its_submitter_and_ray_job_stop_leaves_trials_to_resume(
        head, tmp_path):
    folder = working_dir(tmp_path, "long", epochs=40)
    trials_path = tmp_path / "results" / "long" / "trials.parquet"
    submitter = submit(head, folder, "long", "--submission-id", "onorm-long", wait=False)

    def trained(epochs: int):
        rows = read_trials(trials_path)
        return rows is not None and (rows.epochs_done >= epochs).any()

    try:
        wait_until(lambda: trained(1), "no epoch recorded")
    finally:
        submitter.send_signal(signal.SIGKILL)   # the submitting command goes away
        submitter.wait(timeout=30)
    before = int(read_trials(trials_path).epochs_done.max())
    wait_until(lambda: trained(before + 2), "the job stopped with its submitter")
    assert "RUNNING" in job(head, "status", "onorm-long")

    out = job(head, "stop", "onorm-long")
    assert "was stopped" in job(head, "status", "onorm-long"), out
    logs = job(head, "logs", "onorm-long")
    assert "onorm run: interrupted; re-run the same command to resume" in logs, logs[-3000:]
    rows = read_trials(trials_path)
    assert set(rows.status) == {"pending"}, rows   # none left marked running
    stopped_at = rows.epochs_done.to_dict()
    assert max(stopped_at.values()) < 40

    code, out = submit(head, folder, "long", "--submission-id", "onorm-long-2")
    assert code == 0 and "long: 2 trials: 2 completed" in out, out[-3000:]
    rows = read_trials(trials_path)
    for trial_id, done in stopped_at.items():
        if done:   # resumed from its checkpoint, not from scratch
            assert rows.loc[trial_id, "start_epoch"] > 1, rows
            assert rows.loc[trial_id, "attempts"] == 2
