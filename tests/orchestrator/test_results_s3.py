"""Results on an object store (`--results s3://...`) against a real S3 server process on
loopback (moto's, with credentials checked): refusals before Ray, the lease, a grid run to
completion with readers on the URI, damaged objects recovered as damaged files are, and
(slow) a SIGKILLed driver finished by a second one started in an empty folder.

One grid runs once for the module in its own local Ray, started after the S3 variables are
set (its workers inherit them, as a cluster's nodes would have them).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
from orch_helpers import REPO, kill_tree, tiny_yaml, worker_dies

from benchmarks.s3_loopback import loopback_s3
from orchestrator import storage
from orchestrator.cli import main
from orchestrator.execute import lock as lock_module
from orchestrator.execute.lock import experiment_lock, lock_holder
from orchestrator.execute.store import checkpoint_name, read_state
from orchestrator.layout import ExperimentLayout
from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.trials import expand
from trainers.errors import UserError

GRID = """
s3:
  dataset: cifar10
  data_dir: data
  synthetic: {n_train: 128, n_test: 64}
  resources: {cpu: 1, gpu: 0}
  max_failures: 0
  settings: {depth: 8, batch_size: 64, lr_milestones: [2], workers: 0, device: cpu}
  cells:
    - {norm: batch, epochs: 2, seeds: 1}
    - {norm: group, epochs: 3, seeds: 1}
"""
VALUES = ["epoch", "lr", "train_loss", "train_acc1", "val_loss", "val_acc1"]


@pytest.fixture(scope="module")
def s3():
    """The S3 server, its variables set in this process (and so in the Ray it starts)."""
    patch = pytest.MonkeyPatch()
    with loopback_s3() as server:
        for key, value in server.env.items():
            patch.setenv(key, value)
        patch.setenv("ONORM_LEASE_SECONDS", "4")
        try:
            yield server
        finally:
            patch.undo()


@pytest.fixture(scope="module")
def s3_ray(s3, _ray_shutdown_at_end):
    """A local Ray of this module's own, started with the S3 variables set."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="onorm",
             log_to_driver=False)
    yield ray
    ray.shutdown()


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def read_frame(uri) -> pd.DataFrame:
    return storage.read_parquet(storage.location(uri))


# ------------------------------------------------------------------ before Ray, no Ray
def test_a_bad_uri_a_missing_bucket_and_wrong_credentials_are_refused_before_ray(
        s3, tmp_path, capsys, monkeypatch):
    config = tiny_yaml(tmp_path / "e.yaml", GRID)
    monkeypatch.chdir(tmp_path)
    import orchestrator.execute.runner as runner

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")
    monkeypatch.setattr(runner, "connect", no_ray)
    before = s3.keys()

    code, _, err = run(capsys, "run", "s3", "--config", str(config), "--results", "nofs://x/r")
    assert code == 2 and err.count("\n") == 1, err
    assert "no filesystem opens it" in err and "nofs://x/r" in err, err

    code, _, err = run(capsys, "run", "s3", "--config", str(config), "--results",
                       "s3://no-such-bucket/r")
    assert code == 2 and err.count("\n") == 1, err
    assert "the bucket 'no-such-bucket' does not exist" in err, err

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    code, _, err = run(capsys, "run", "s3", "--config", str(config), "--results", s3.uri("r"))
    assert code == 2 and err.count("\n") == 1, err
    assert "refused these credentials" in err and "not-the-secret" not in err, err
    code, _, err = run(capsys, "status", "--results", s3.uri("r"))
    assert code == 2 and "refused these credentials" in err, err
    monkeypatch.undo()

    assert s3.keys() == before   # nothing written to the bucket
    assert os.listdir(tmp_path) == ["e.yaml"]   # and no local `s3:` or `nofs:` folder


def test_the_lease_refuses_a_second_driver_while_fresh_and_is_taken_over_when_stale(
        s3, tmp_path, capsys):
    exp = storage.location(s3.uri("lease", "s3"))
    layout = ExperimentLayout(exp)
    with experiment_lock(exp):
        lease = json.loads(storage.read_text(layout.lock))
        assert lease["pid"] == os.getpid() and lease["heartbeat"] >= lease["started_at"]
        assert lock_holder(exp)["pid"] == os.getpid()
        with pytest.raises(UserError, match="another run of 's3' is writing s3://"):
            with experiment_lock(exp):
                pass
        # the heartbeat keeps it fresh past the lease's length (4 s here)
        time.sleep(5)
        renewed = json.loads(storage.read_text(layout.lock))
        assert renewed["heartbeat"] > lease["heartbeat"]
        config = tiny_yaml(tmp_path / "e.yaml", GRID)
        code, _, err = run(capsys, "run", "s3", "--config", str(config), "--results",
                           s3.uri("lease"))
        assert code == 2 and "another run of 's3'" in err and err.count("\n") == 1, err
    assert not storage.exists(layout.lock)   # released
    assert lock_holder(exp) is None

    # a driver killed while holding it leaves its lease behind: respected while fresh...
    killed = {"holder": "dead", "pid": 1, "host": "elsewhere", "started_at": time.time(),
              "heartbeat": time.time(), "argv": []}
    storage.write_text(layout.lock, json.dumps(killed))
    assert lock_holder(exp)["host"] == "elsewhere"
    with pytest.raises(UserError, match="pid 1 on elsewhere"):
        with experiment_lock(exp):
            pass
    # ...and taken over once its heartbeat is older than the lease
    storage.write_text(layout.lock, json.dumps({**killed, "heartbeat": time.time() - 10}))
    assert lock_holder(exp) is None
    with experiment_lock(exp):
        assert json.loads(storage.read_text(layout.lock))["pid"] == os.getpid()
    assert lock_module.lease_seconds() == 4


# ------------------------------------------------------------------ a grid on s3://
@pytest.fixture(scope="module")
def first_run(s3, s3_ray, tmp_path_factory):
    """The grid once on s3://: a 2-epoch trial completes; the 3-epoch trial's worker dies
    after epoch 2 and (max_failures 0) it fails. Checkpoints are written by the trials'
    nodes directly: no store actor is started."""
    from orchestrator.execute import runner
    from orchestrator.execute.live import LiveView

    root = tmp_path_factory.mktemp("s3grid")
    config = tiny_yaml(root / "e.yaml", GRID)
    done, partial = expand(load_experiments(config)["s3"])
    real_start_store, runner.start_store = runner.start_store, None   # must not be called
    try:
        with worker_dies([partial], after_epoch=2):
            summary = runner.run_trials("s3", [done, partial], s3.uri("grid"), max_failures=0,
                                        live=LiveView("s3", tty=False))
    finally:
        runner.start_store = real_start_store
    assert summary.counts == {"completed": 1, "failed": 1}
    assert str(summary.layout.dir) == s3.uri("grid", "s3")
    return config, done, partial, summary.layout


def test_a_grid_on_s3_records_everything_in_the_bucket(s3, first_run, tmp_path):
    config, done, partial, layout = first_run
    keys = s3.keys("grid/s3/")
    metrics = read_frame(layout.metrics)
    assert sorted(zip(metrics.trial_id, metrics.epoch)) == sorted(
        [(done.trial_id, 1), (done.trial_id, 2), (partial.trial_id, 1), (partial.trial_id, 2)])
    rows = read_frame(layout.trials).set_index("trial_id")
    assert rows.loc[done.trial_id, "status"] == "completed"
    assert rows.loc[partial.trial_id, "status"] == "failed"
    # retention: the completed trial keeps its history and its final checkpoint only; the
    # unfinished one its two latest
    ckpt = [k for k in keys if "/checkpoints/" in k and k.endswith(".pth.tar")]
    assert sorted(k.rsplit("/", 2)[1:] for k in ckpt) == sorted([
        [done.trial_id, checkpoint_name(2)], [partial.trial_id, checkpoint_name(1)],
        [partial.trial_id, checkpoint_name(2)]])
    state = read_state(layout.trial_store(done.trial_id))
    assert [e["epoch"] for e in state["checkpoints"]] == [2] and len(state["history"]) == 2
    # the trackers' folder was uploaded; Tune's own folder stayed off the bucket
    assert any(k.startswith("grid/s3/tensorboard/") for k in keys), keys
    assert not any(k.startswith("grid/s3/ray/") for k in keys), keys
    assert not any(k.endswith(".lock") for k in keys)   # the lease was given back
    # no credential in anything written
    secret = s3.env["AWS_SECRET_ACCESS_KEY"].encode()
    client = s3.client()
    for key in keys:
        body = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        assert secret not in body, key


def test_table_and_status_read_the_uri(s3, first_run, capsys):
    config, done, partial, layout = first_run
    code, out, err = run(capsys, "status", "--results", s3.uri("grid"))
    assert code == 0, err
    assert out.splitlines()[0].startswith("s3 (grid): 1/2 done"), out
    code, out, err = run(capsys, "status", "s3", "--results", s3.uri("grid"))
    assert code == 0 and done.trial_id in out and partial.trial_id in out, out
    code, out, err = run(capsys, "table", s3.uri("grid", "s3"), "--include-running")
    assert code == 0, err
    assert f"wrote {s3.uri('grid', 's3', 'tables', 'accuracy.md')}" in out, out
    table = storage.read_text(layout.table("accuracy", ".md"))
    assert table.strip() and table.strip() in out
    code, out, err = run(capsys, "plot", "s3", "--results", s3.uri("grid"),
                         "--include-running")
    assert code == 0 and s3.uri("grid", "s3", "plots", "val_acc1.png") in out, err
    png = storage.read_bytes(layout.plot("val_acc1"))
    assert png.startswith(b"\x89PNG")
    # the dry run lists what has run from the bucket
    code, out, err = run(capsys, "run", "s3", "--config", str(config), "--results",
                         s3.uri("grid"), "--dry-run")
    assert code == 0, err
    assert f"results in {s3.uri('grid', 's3')}" in out and "1 done, 1 partial" in out, out


def test_readers_on_the_uri_import_neither_ray_nor_torch(s3, first_run):
    code = ("import sys; from orchestrator.cli import main\n"
            f"assert main(['table', {s3.uri('grid', 's3')!r}, '--include-running']) == 0\n"
            f"assert main(['status', '--results', {s3.uri('grid')!r}]) == 0\n"
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))\n")
    env = {**os.environ, **s3.env}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_a_truncated_checkpoint_and_a_damaged_metrics_object_are_recovered(
        s3, first_run, capsys):
    config, done, partial, layout = first_run
    before = read_frame(layout.metrics)
    latest = layout.trial_store(partial.trial_id) / checkpoint_name(2)
    data = storage.read_bytes(latest)
    storage.write_bytes(latest, data[:len(data) // 2])
    metrics = storage.read_bytes(layout.metrics)
    storage.write_bytes(layout.metrics, metrics[:len(metrics) // 3])

    code, out, err = run(capsys, "run", "s3", "--config", str(config), "--results",
                         s3.uri("grid"))
    assert code == 0, err
    assert ("[s3] metrics.parquet was damaged (" in err and "moved it to "
            f"{s3.uri('grid', 's3', 'metrics.parquet.damaged-')}" in err), err
    warning = (f"[s3] warning: trial {partial.trial_id}: the checkpoint of epoch 2 is damaged "
               f"({len(data) // 2} bytes, checksum mismatch): resuming from epoch 1's "
               "checkpoint; epoch 2 is trained again")
    assert err.count(warning) == 1, err
    rows = read_frame(layout.trials).set_index("trial_id")
    assert set(rows.status) == {"completed"}
    assert rows.loc[partial.trial_id, "start_epoch"] == 2
    after = read_frame(layout.metrics)
    assert sorted(zip(after.trial_id, after.epoch)) == sorted(
        [(done.trial_id, 1), (done.trial_id, 2)] + [(partial.trial_id, e) for e in (1, 2, 3)])
    old = before[before.trial_id == partial.trial_id].sort_values("epoch")
    new = after[after.trial_id == partial.trial_id].sort_values("epoch").iloc[:2]
    pd.testing.assert_frame_equal(new[VALUES].reset_index(drop=True),
                                  old[VALUES].reset_index(drop=True))   # retrained the same
    names = storage.names(layout.trial_store(partial.trial_id))
    assert len([n for n in names if n.startswith(f"{checkpoint_name(2)}.damaged-")]) == 1
    assert [n for n in names if n.endswith(".pth.tar")] == [checkpoint_name(3)]   # retention
    assert len([n for n in storage.names(layout.dir)
                if n.startswith("metrics.parquet.damaged-")]) == 1


# ------------------------------------------------------------------ a driver killed
KILL_GRID = """
kill:
  dataset: cifar10
  data_dir: data
  synthetic: {n_train: 128, n_test: 64}
  resources: {cpu: 1, gpu: 0}
  max_concurrent: 2
  settings: {depth: 8, batch_size: 64, lr_milestones: [2], workers: 0, device: cpu}
  cells:
    - {norm: batch, epochs: 2, seeds: 1}
    - {norm: group, epochs: 10, seeds: 1}
    - {norm: batch, epochs: 2, seeds: [1]}
"""


def s3_driver(s3, config, results: str, cwd, log) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(s3.env, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "run", "kill", "--config", str(config),
             "--results", results], cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_a_sigkilled_driver_is_finished_by_a_driver_in_an_empty_folder(
        s3, ray_exclusive, tmp_path):
    config = tiny_yaml(tmp_path / "e.yaml", KILL_GRID)
    short, long, third = expand(load_experiments(config)["kill"])
    results = s3.uri("killed")
    layout = ExperimentLayout.of(results, "kill")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()

    first = s3_driver(s3, config, results, tmp_path / "one", tmp_path / "first.log")
    try:
        deadline = time.time() + 240
        while True:
            log = (tmp_path / "first.log").read_text()
            assert time.time() < deadline and first.poll() is None, log[-3000:]
            try:
                rows = read_frame(layout.trials).set_index("trial_id")
            except (FileNotFoundError, UserError):
                rows = None
            if (rows is not None and rows.loc[short.trial_id, "status"] == "completed"
                    and 1 <= rows.loc[long.trial_id, "epochs_done"] <= 7):
                break
            time.sleep(0.5)
    finally:
        kill_tree(first)
    before = read_frame(layout.metrics)
    stored = read_state(layout.trial_store(long.trial_id))["epoch"]
    assert 1 <= stored < 10

    # the killed driver's lease blocks the next one until its heartbeat is stale (4 s here)
    assert lock_holder(layout.dir)["pid"] == first.pid
    deadline = time.time() + 30
    while lock_holder(layout.dir) is not None:
        assert time.time() < deadline
        time.sleep(0.5)
    # a fresh machine: another, empty working folder; nothing local from the first
    second = s3_driver(s3, config, results, tmp_path / "two", tmp_path / "second.log")
    try:
        assert second.wait(timeout=400) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        if second.poll() is None:
            kill_tree(second)
    log = (tmp_path / "second.log").read_text()
    assert f"skip {short.trial_id} (completed)" in log, log[-3000:]
    rows = read_frame(layout.trials).set_index("trial_id")
    assert set(rows.status) == {"completed"} and len(rows) == 3
    assert rows.loc[long.trial_id, "start_epoch"] == stored + 1
    assert rows.loc[short.trial_id, "attempts"] == 1
    after = read_frame(layout.metrics)
    expected = sorted([(short.trial_id, e) for e in (1, 2)] + [(third.trial_id, e) for e in (1, 2)]
                      + [(long.trial_id, e) for e in range(1, 11)])
    assert sorted(zip(after.trial_id, after.epoch.astype(int))) == expected
    pd.testing.assert_frame_equal(
        before[before.trial_id == short.trial_id].reset_index(drop=True),
        after[after.trial_id == short.trial_id].reset_index(drop=True))
    assert os.listdir(tmp_path / "two") == []   # the second driver wrote nothing locally


def test_a_parquet_object_reads_back_verified(s3):
    loc = storage.location(s3.uri("unit", "m.parquet"))
    storage.write_parquet(loc, pd.DataFrame({"a": [1, 2]}))
    assert list(storage.read_parquet(loc)["a"]) == [1, 2]
    assert storage.names(loc.parent) == ["m.parquet"]
    aside = storage.move_aside(loc)
    assert not storage.exists(loc) and storage.read_bytes(aside).startswith(b"PAR1")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(loc)
    buffer = io.BytesIO()
    pd.DataFrame({"b": [3]}).to_parquet(buffer)
    storage.write_bytes(loc, buffer.getvalue())
    assert list(storage.read_parquet(loc)["b"]) == [3]   # a file without a digest still reads
