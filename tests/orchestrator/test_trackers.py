"""Tracker logs written by the driver from the record: exactly one value per metric per epoch
through a killed driver, a retry that re-reports an epoch, and rows repaired from the store.
(The same through real Ray runs: test_run_driver_killed.py.)"""

from __future__ import annotations

import json
import struct
import types

import pandas as pd
import pytest
from orch_helpers import PROV, epoch, tensorboard_scalars, tiny_trial

from orchestrator.cli import main
from orchestrator.execute.recorder import Recorder
from orchestrator.execute.store import TrialStore
from orchestrator.execute.trackers import TRACKED, Trackers, run_name
from orchestrator.layout import ExperimentLayout
from trainers.parquet_io import write_parquet_atomic


def timed(e: int, seconds: float = 1.0) -> dict:
    return {**epoch(e, 10.0 * e), "epoch_time_s": seconds}


def run_epochs(layout, trials, log, epochs, attempt=1, say=None):
    """A driver that records `epochs` {trial: [(epoch, metrics)]}; the store gets each epoch
    first, as from the trainable. Returns the recorder, left without closing (a killed
    driver) unless the caller closes it."""
    rec = Recorder(layout, trials, PROV, trackers=Trackers(layout, log, say=say or print))
    rec.sync_trackers()
    store = TrialStore(layout.store)
    for trial in trials:
        store.begin(trial.trial_id, trial.to_payload(), {"host": "h", **PROV})
        rec.started(trial.trial_id)
        for e, metrics in epochs.get(trial.trial_id, []):
            store.put(trial.trial_id, e, b"w", metrics)
            rec.result(trial.trial_id, {**metrics, "attempt": attempt})
    return rec, store


def scalars(layout, trial):
    return tensorboard_scalars(layout.tensorboard_run(run_name(trial)))


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def kill_resume_retry(tmp_path, log, say=None):
    """Trial a: 2 epochs, the driver dies as epoch 3 reaches the store; a new driver then
    records epochs 3 (filled in from the store), 3 again (a retry, other timings) and 4, and
    completes it. Trial b: 2 epochs, completed in the first driver."""
    data = tmp_path / "data"
    a, b = tiny_trial(data, "online", epochs=4), tiny_trial(data, "batch", seed=1, epochs=2)
    layout = ExperimentLayout.of(tmp_path, "exp")
    first, store = run_epochs(layout, [a, b], log, {
        a.trial_id: [(1, timed(1)), (2, timed(2))], b.trial_id: [(1, timed(1)), (2, timed(2))]},
        say=say)
    store.finish(b.trial_id, "completed")
    first.finished(b.trial_id)
    store.put(a.trial_id, 3, b"w", timed(3, 3.0))   # the driver was killed before Tune said
    del first   # never closed: what a SIGKILL leaves
    second, store = run_epochs(layout, [a], log, {
        a.trial_id: [(3, timed(3, 3.5)), (4, timed(4))]}, attempt=2, say=say)
    store.finish(a.trial_id, "completed")
    second.finished(a.trial_id)
    second.close_trackers()
    return layout, a, b


def test_tensorboard_holds_one_value_per_epoch_through_a_kill_and_a_retry(tmp_path):
    layout, a, b = kill_resume_retry(tmp_path, [])
    assert run_name(a) == f"online-1023_1024-127_128-ls-seed0-{a.trial_id}"
    assert run_name(b) == f"batch-seed1-{b.trial_id}"
    metrics = pd.read_parquet(layout.metrics)
    for trial, epochs in ((a, 4), (b, 2)):
        events = scalars(layout, trial)
        assert [step for step, _ in events] == list(range(1, epochs + 1))
        assert all(set(values) == set(TRACKED) for _, values in events)
        rows = metrics[metrics.trial_id == trial.trial_id].set_index("epoch")
        for step, values in events:
            assert values == {k: f32(rows.loc[step, k]) for k in TRACKED}
    # the retry's epoch 3 replaced the first report, in the record and in the event files
    # (a's were rewritten whole: one file); b's, complete, were left as they were
    assert dict(scalars(layout, a))[3]["epoch_time_s"] == 3.5
    assert len(list(layout.tensorboard_run(run_name(a)).iterdir())) == 1
    assert len(list(layout.tensorboard_run(run_name(b)).iterdir())) == 1


def test_a_resumed_trial_is_appended_to(tmp_path):
    trial = tiny_trial(tmp_path / "data", "group", epochs=3)
    layout = ExperimentLayout.of(tmp_path, "exp")
    run_epochs(layout, [trial], [], {trial.trial_id: [(1, timed(1))]})   # then killed
    rec, store = run_epochs(layout, [trial], [], {trial.trial_id: [(2, timed(2)),
                                                                   (3, timed(3))]})
    rec.close_trackers()
    assert [s for s, _ in scalars(layout, trial)] == [1, 2, 3]
    assert len(list(layout.tensorboard_run(run_name(trial)).iterdir())) == 2


def test_an_epoch_written_after_the_last_note_is_purged_by_the_next_driver(tmp_path):
    """A driver killed after writing epoch 2's event but before its note: the next driver
    writes epoch 2 again (from the record, retrained here with other values) into a file
    that begins with TensorBoard's purge marker at epoch 2, so TensorBoard drops the first."""
    trial = tiny_trial(tmp_path / "data", "group", epochs=3)
    layout = ExperimentLayout.of(tmp_path, "exp")
    note = layout.tracker_note("tensorboard", trial.trial_id)
    run_epochs(layout, [trial], [], {trial.trial_id: [(1, timed(1))]})
    after_epoch_1 = note.read_text()
    first, store = run_epochs(layout, [trial], [], {trial.trial_id: [(2, timed(2))]})
    note.write_text(after_epoch_1)   # the kill: epoch 2's event is written, its note is not
    del first
    store.put(trial.trial_id, 2, b"w", epoch(2, 55.0))   # a retry trained epoch 2 again
    rec, store = run_epochs(layout, [trial], [], {trial.trial_id: [(3, timed(3))]})
    rec.close_trackers()
    events = scalars(layout, trial)
    assert [s for s, _ in events] == [1, 2, 3]
    assert events[1][1]["val_acc1"] == 55.0
    # TensorBoard's loader sees the file of epoch 2's first report beside the later one
    assert len(list(layout.tensorboard_run(run_name(trial)).iterdir())) == 3


def test_a_row_repaired_from_the_store_rewrites_that_trials_event_files(tmp_path):
    layout, a, b = kill_resume_retry(tmp_path, [])
    bad = pd.read_parquet(layout.metrics)
    bad.loc[(bad.trial_id == b.trial_id) & (bad.epoch == 1), "val_acc1"] = 99.0
    write_parquet_atomic(bad, layout.metrics)
    kept = sorted(layout.tensorboard_run(run_name(a)).iterdir())
    # event files that hold the wrong row too (written by an older onorm, say) ...
    wrong = Trackers(layout, [])
    rows = bad[bad.trial_id == b.trial_id]
    wrong.sync(b, {int(r["epoch"]): r for r in rows.to_dict("records")}, "completed")
    wrong.close()
    assert dict(scalars(layout, b))[1]["val_acc1"] == 99.0
    # ... then the next one, which repairs the row from the store, rewrites the trial's log
    said = []
    rec = Recorder(layout, [a, b], PROV, say=said.append, trackers=Trackers(layout, []))
    rec.sync_trackers()
    rec.close_trackers()
    assert "1 row(s) disagreed with the trial store" in said[0]
    events = scalars(layout, b)
    assert [s for s, _ in events] == [1, 2] and events[0][1]["val_acc1"] == 10.0
    assert len(list(layout.tensorboard_run(run_name(b)).iterdir())) == 1
    assert sorted(layout.tensorboard_run(run_name(a)).iterdir()) == kept   # untouched


def test_mlflow_offline_holds_one_run_per_trial_with_every_epoch_once(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    said = []
    layout, a, b = kill_resume_retry(tmp_path, ["mlflow"], say=said.append)
    client = MlflowClient(tracking_uri=layout.mlflow.as_uri())
    experiment = client.get_experiment_by_name("exp")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {a.trial_id, b.trial_id} and not said
    metrics = pd.read_parquet(layout.metrics)
    for trial, epochs in ((a, 4), (b, 2)):
        run = runs[trial.trial_id]
        assert run.info.status == "FINISHED"
        assert run.data.params["norm"] == trial.config.norm
        assert run.data.params["afwd"] == str(trial.config.afwd)
        assert run.data.tags["onorm.trial_id"] == trial.trial_id
        rows = metrics[metrics.trial_id == trial.trial_id].set_index("epoch")
        for key in TRACKED:
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1)), key
            assert {m.step: m.value for m in history} == rows[key].to_dict(), key


def test_a_missing_tracker_package_is_one_line_before_anything_runs(tmp_path, monkeypatch,
                                                                       capsys):
    from orch_helpers import tiny_yaml

    monkeypatch.setitem(__import__("sys").modules, "wandb", None)   # not installed
    config = tiny_yaml(tmp_path / "e.yaml")
    code = main(["run", "tiny", "--config", str(config), "--results", str(tmp_path / "r"),
                 "--log", "wandb"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == ("onorm run: error: --log wandb needs the optional package wandb: install "
                   "it with `pip install 'onorm[wandb]'`, or leave out --log wandb\n")
    assert not (tmp_path / "r").exists()


class FakeWandb:
    """wandb's calls the W&B tracker makes, kept in memory (the package is optional); each
    run has an offline folder, as W&B's do."""

    class Settings(dict):
        def __init__(self, **kw):
            super().__init__(kw)

    def __init__(self, root):
        self.runs, self.root = [], root

    def init(self, **kw):
        fake = self

        class Run:
            def __init__(self):
                self.kw, self.logged, self.finished = kw, [], None
                self.settings = types.SimpleNamespace(
                    sync_dir=fake.root / f"offline-run-{len(fake.runs)}-{kw['id']}")
                self.settings.sync_dir.mkdir(parents=True)
                fake.runs.append(self)

            def define_metric(self, *a, **k):
                pass

            def log(self, row):
                self.logged.append(dict(row))

            def finish(self, exit_code=0):
                self.finished = exit_code

        return Run()


def test_wandb_offline_holds_each_epoch_once_in_one_run_per_trial(tmp_path, monkeypatch):
    fake = FakeWandb(tmp_path / "exp" / "wandb" / "wandb")
    monkeypatch.setitem(__import__("sys").modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    layout, a, b = kill_resume_retry(tmp_path, ["wandb"])
    # what is left on disk: one run folder per trial, holding every epoch once
    left = {r.settings.sync_dir.name: r for r in fake.runs if r.settings.sync_dir.exists()}
    assert sorted(r.kw["name"] for r in left.values()) == sorted([a.trial_id, b.trial_id])
    for trial, epochs in ((a, 4), (b, 2)):
        run = next(r for r in left.values() if r.kw["name"] == trial.trial_id)
        assert run.kw["mode"] == "offline" and run.kw["config"]["norm"] == trial.config.norm
        assert [row["epoch"] for row in run.logged] == list(range(1, epochs + 1))
        assert run.finished == 0
    # b finished in the first driver and was kept; a's run, left open by the killed driver,
    # was logged again whole (with the retry's epoch 3) and the open one removed
    assert [r.kw["name"] for r in fake.runs].count(b.trial_id) == 1
    a_run = next(r for r in left.values() if r.kw["name"] == a.trial_id)
    assert a_run.logged[2]["epoch_time_s"] == 3.5


def offline_run(path) -> dict:
    """An offline W&B run's records, read back from its .wandb file as `wandb sync` reads
    them: W&B's log format (a 7-byte file header, then records in 32 KiB blocks, each piece
    with a CRC-32, a length and a full/first/middle/last kind) holding protobuf Records."""
    import zlib

    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
    run = {"history": [], "exit_code": None}
    pos, pieces = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7 or data[pos:pos + 7] == bytes(7):   # a block's padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        piece = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(bytes([kind]) + piece) == crc, f"{path}: damaged at byte {pos}"
        pos, pieces = pos + 7 + length, pieces + piece
        if kind not in (1, 4):   # a record's first or middle piece
            continue
        record, pieces = wandb_internal_pb2.Record.FromString(pieces), b""
        which = record.WhichOneof("record_type")
        if which == "run":
            run.update(name=record.run.display_name, config={
                item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif which == "history":
            # wandb-core writes each key as nested_key (a path of one name here)
            run["history"].append({item.key or "/".join(item.nested_key):
                                   json.loads(item.value_json) for item in record.history.item})
        elif which == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def test_wandb_offline_with_the_real_package(tmp_path, monkeypatch):
    """The same kill, resume and retry through the real wandb package, offline: what its
    files hold, read back, is one finished run per trial with every epoch once."""
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))   # nothing written under ~
    monkeypatch.delenv("WANDB_MODE", raising=False)
    layout, a, b = kill_resume_retry(tmp_path, ["wandb"])
    files = sorted((tmp_path / "exp" / "wandb" / "wandb").glob("offline-run-*/*.wandb"))
    runs = {run["name"]: run for run in map(offline_run, files)}
    assert len(files) == 2 and sorted(runs) == sorted([a.trial_id, b.trial_id])
    for trial, epochs in ((a, 4), (b, 2)):
        run = runs[trial.trial_id]
        assert run["exit_code"] == 0 and run["config"]["norm"] == trial.config.norm
        assert [row["epoch"] for row in run["history"]] == list(range(1, epochs + 1))
        assert [row["val_acc1"] for row in run["history"]] == [10.0 * e
                                                              for e in range(1, epochs + 1)]
    # a's epoch 3 as the retry recorded it, not as the killed driver's store had it
    assert runs[a.trial_id]["history"][2]["epoch_time_s"] == 3.5


def test_trackers_with_open_logs_can_be_pickled_as_tune_pickles_its_callbacks(tmp_path):
    from ray import cloudpickle

    trial = tiny_trial(tmp_path / "data", "batch", epochs=3)
    layout = ExperimentLayout.of(tmp_path, "exp")
    rec, _ = run_epochs(layout, [trial], [], {trial.trial_id: [(1, timed(1))]})
    assert rec.trackers.active[0].writers   # an event file is open
    cloudpickle.dumps(rec)
    rec.close_trackers()
