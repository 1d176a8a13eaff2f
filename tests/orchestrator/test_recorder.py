"""The driver's Parquet record: statuses from the store's outcome, dedup, and reconciliation."""

from __future__ import annotations

import math

import pandas as pd
from orch_helpers import PROV, epoch, tiny_trial

from orchestrator.execute.recorder import Recorder
from orchestrator.execute.store import TrialStore
from orchestrator.layout import ExperimentLayout


def test_statuses_dedup_and_reconcile_after_a_lost_driver(tmp_path):
    data = tmp_path / "data"
    done, diverged, stopped = (tiny_trial(data, n, epochs=3) for n in ("batch", "group", "none"))
    rec = Recorder(ExperimentLayout.of(tmp_path, "exp"), [done, diverged, stopped], PROV)
    assert set(rec.counts()) == {"pending"}
    store = TrialStore(rec.layout.store)

    for trial in (done, diverged, stopped):
        assert store.begin(trial.trial_id)["epoch"] == 0
        rec.started(trial.trial_id)
    for e, acc in ((1, 20.0), (2, 50.0), (2, 40.0), (3, 45.0)):   # epoch 2 re-reported
        store.put(done.trial_id, e, b"ckpt", epoch(e, acc))
        rec.result(done.trial_id, {**epoch(e, acc), "attempt": 1, "device": "cpu"})
    store.finish(done.trial_id, "completed")
    rec.finished(done.trial_id)
    store.put(diverged.trial_id, 1, None, epoch(1, float("nan"), float("nan")))
    rec.result(diverged.trial_id, {**epoch(1, float("nan"), float("nan")), "attempt": 1})
    store.finish(diverged.trial_id, "diverged")
    rec.finished(diverged.trial_id)
    store.put(stopped.trial_id, 1, b"ckpt", epoch(1, 10.0))
    rec.result(stopped.trial_id, {**epoch(1, 10.0), "attempt": 1})
    rec.finished(stopped.trial_id)        # ended by a scheduler: no outcome stored

    trials = pd.read_parquet(rec.layout.trials).set_index("trial_id")
    assert trials.loc[done.trial_id, "status"] == "completed"
    assert trials.loc[diverged.trial_id, "status"] == "diverged"
    assert trials.loc[stopped.trial_id, "status"] == "stopped"
    assert trials.loc[done.trial_id, "best_epoch"] == 3          # epoch 2's 50 was replaced
    assert trials.loc[done.trial_id, "best_val_acc1"] == 45.0
    assert trials.loc[stopped.trial_id, "epochs_done"] == 1
    metrics = pd.read_parquet(rec.layout.metrics)
    assert sorted(zip(metrics.trial_id, metrics.epoch)) == sorted(
        [(done.trial_id, e) for e in (1, 2, 3)] + [(diverged.trial_id, 1), (stopped.trial_id, 1)])
    row2 = metrics[(metrics.trial_id == done.trial_id) & (metrics.epoch == 2)]
    assert row2.val_acc1.tolist() == [40.0]                      # last report wins

    # A new driver: the stored epoch the old driver never recorded is filled in, the done
    # and diverged trials are skipped, the stopped one runs again.
    store.put(stopped.trial_id, 2, b"ckpt2", epoch(2, 12.0))
    rec2 = Recorder(ExperimentLayout.of(tmp_path, "exp"), [done, diverged, stopped], PROV)
    assert [t.trial_id for t in rec2.pending()] == [stopped.trial_id]
    assert {t.trial_id for t in rec2.skipped()} == {done.trial_id, diverged.trial_id}
    metrics = pd.read_parquet(rec2.layout.metrics)
    assert (stopped.trial_id, 2) in set(zip(metrics.trial_id, metrics.epoch))
    assert store.begin(stopped.trial_id) == {"attempt": 2, "epoch": 2, "checkpoint": b"ckpt2"}
    assert math.isnan(pd.read_parquet(rec2.layout.trials).set_index("trial_id")
                      .loc[diverged.trial_id, "best_val_acc1"])


def test_a_scheduler_stop_at_the_last_epoch_counts_as_completed(tmp_path):
    last, nan = (tiny_trial(tmp_path / "data", n, epochs=2) for n in ("batch", "group"))
    rec = Recorder(ExperimentLayout.of(tmp_path, "exp"), [last, nan], PROV)
    for e in (1, 2):
        rec.result(last.trial_id, {**epoch(e, 30.0 + e), "attempt": 1})
    rec.result(nan.trial_id, {**epoch(1, 10.0, float("inf")), "attempt": 1})
    rec.finished(last.trial_id)           # ASHA stops at max_t before the trainable returns
    rec.finished(nan.trial_id)
    trials = pd.read_parquet(rec.layout.trials).set_index("trial_id")
    assert trials.loc[last.trial_id, "status"] == "completed"
    assert trials.loc[nan.trial_id, "status"] == "diverged"


def test_a_resumed_trial_records_the_latest_attempts_commit_and_keeps_the_first(tmp_path):
    trial = tiny_trial(tmp_path / "data", "batch", epochs=3)
    layout = ExperimentLayout.of(tmp_path, "exp")
    first = Recorder(layout, [trial], {"git_commit": "aaa", "package_versions": '{"v": 1}'})
    first.started(trial.trial_id)
    first.interrupted()   # the run stops before the trial completes
    later = Recorder(layout, [trial], {"git_commit": "bbb", "package_versions": '{"v": 2}'})
    row = pd.read_parquet(layout.trials).set_index("trial_id").loc[trial.trial_id]
    assert row["git_commit"] == "aaa"   # not started again yet: still the first attempt's
    later.started(trial.trial_id)
    row = pd.read_parquet(layout.trials).set_index("trial_id").loc[trial.trial_id]
    assert (row["git_commit"], row["package_versions"]) == ("bbb", '{"v": 2}')
    assert row["first_git_commit"] == "aaa"
