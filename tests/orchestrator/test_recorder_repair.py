"""The Parquet record rebuilt from the trial store: damaged files moved aside, rows repaired."""

from __future__ import annotations

import pandas as pd
from orch_helpers import PROV, epoch, tiny_trial

from orchestrator.execute.recorder import Recorder
from orchestrator.execute.store import TrialStore
from orchestrator.layout import ExperimentLayout
from trainers.parquet_io import write_parquet_atomic


def recorded(tmp_path):
    """Two trials run as the trainable runs them: one completed, one after 1 of 3 epochs."""
    data = tmp_path / "data"
    done, partial = tiny_trial(data, "batch", epochs=2), tiny_trial(data, "group", epochs=3)
    layout = ExperimentLayout.of(tmp_path, "exp")
    rec = Recorder(layout, [done, partial], PROV)
    store = TrialStore(layout.store)
    for trial, epochs in ((done, 2), (partial, 1)):
        store.begin(trial.trial_id, trial.to_payload(), {"host": "h1", **PROV})
        rec.started(trial.trial_id)
        for e in range(1, epochs + 1):
            store.put(trial.trial_id, e, b"w", epoch(e, 10.0 * e))
            rec.result(trial.trial_id, {**epoch(e, 10.0 * e), "attempt": 1, "host": "h1"})
    store.finish(done.trial_id, "completed")
    rec.finished(done.trial_id)
    rec.interrupted()
    return layout, done, partial


def test_damaged_files_are_moved_aside_and_rebuilt_from_the_store(tmp_path):
    layout, done, partial = recorded(tmp_path)
    metrics_before = pd.read_parquet(layout.metrics)
    trials_before = pd.read_parquet(layout.trials).set_index("trial_id")
    layout.metrics.write_bytes(layout.metrics.read_bytes()[:200])
    layout.trials.write_bytes(b"")
    said = []
    rec = Recorder(layout, [done, partial], PROV, say=said.append)
    assert len(said) == 2
    assert said[0].startswith("[exp] metrics.parquet was damaged (") and \
        "rebuilt it from the trial store (3 rows)" in said[0]
    assert "[exp] trials.parquet was damaged (ArrowInvalid: Parquet file size is 0 bytes): " \
           "moved it to" in said[1]
    # kept, never deleted
    assert len(list(layout.dir.glob("metrics.parquet.damaged-*"))) == 1
    assert len(list(layout.dir.glob("trials.parquet.damaged-*"))) == 1
    pd.testing.assert_frame_equal(pd.read_parquet(layout.metrics), metrics_before)
    trials = pd.read_parquet(layout.trials).set_index("trial_id")
    assert trials.loc[done.trial_id, "status"] == "completed"
    assert trials.loc[partial.trial_id, "status"] == "pending"
    for col in ("epochs_done", "best_epoch", "best_val_acc1", "attempts", "host",
                "git_commit", "config_json"):
        assert (trials[col] == trials_before[col]).all(), col
    assert [t.trial_id for t in rec.pending()] == [partial.trial_id]


def test_rows_that_disagree_with_the_store_are_repaired_and_counted(tmp_path):
    layout, done, partial = recorded(tmp_path)
    good = pd.read_parquet(layout.metrics)
    bad = good.copy()
    bad.loc[0, "val_acc1"] = 99.0            # a valid file with a wrong value
    bad.loc[1, "train_loss"] = float("nan")
    write_parquet_atomic(bad, layout.metrics)
    said = []
    Recorder(layout, [done, partial], PROV, say=said.append)
    assert said == ["[exp] metrics.parquet: 2 row(s) disagreed with the trial store and were "
                    "repaired from it"]
    pd.testing.assert_frame_equal(pd.read_parquet(layout.metrics), good)


def test_trials_outside_the_plan_are_rebuilt_from_their_stored_spec(tmp_path):
    layout, done, partial = recorded(tmp_path)
    layout.metrics.unlink()
    layout.trials.unlink()
    Recorder(layout, [partial], PROV, say=lambda line: None)   # `done` left the plan
    trials = pd.read_parquet(layout.trials).set_index("trial_id")
    assert trials.loc[done.trial_id, "status"] == "completed"
    metrics = pd.read_parquet(layout.metrics)
    assert sorted(metrics[metrics.trial_id == done.trial_id].epoch) == [1, 2]


def test_a_fresh_recorder_writes_nothing(tmp_path):
    trial = tiny_trial(tmp_path / "data", "batch")
    layout = ExperimentLayout.of(tmp_path, "fresh")
    Recorder(layout, [trial], PROV)
    assert not layout.metrics.exists() and not layout.trials.exists()
