"""A trial whose worker process dies resumes from its stored checkpoint, not from epoch 1."""

from __future__ import annotations

import pandas as pd
from orch_helpers import tiny_trial, worker_dies

from orchestrator.execute.live import LiveView
from orchestrator.execute.runner import run_trials


def test_worker_death_resumes_from_checkpoint(ray_session, tmp_path):
    trials = [tiny_trial(tmp_path / "data", "batch", seed=0, epochs=3),
              tiny_trial(tmp_path / "data", "group", seed=0, epochs=2)]
    with worker_dies(trials, after_epoch=2):
        summary = run_trials("retry", trials, tmp_path / "results", max_failures=2,
                             live=LiveView("retry", tty=False))
    assert summary.counts == {"completed": 2} and summary.exit_code == 0
    rows = pd.read_parquet(summary.layout.trials).set_index("trial_id")
    batch, group = trials
    # died after epoch 2 on its first attempt; the retry started at epoch 3
    assert rows.loc[batch.trial_id, "attempts"] == 2
    assert rows.loc[batch.trial_id, "start_epoch"] == 3
    assert rows.loc[batch.trial_id, "epochs_done"] == 3
    # the group trial also died after its epoch 2 (its last); the retry had nothing left
    assert rows.loc[group.trial_id, "attempts"] == 2
    assert rows.loc[group.trial_id, "start_epoch"] == 3
    assert rows.loc[group.trial_id, "status"] == "completed"
    metrics = pd.read_parquet(summary.layout.metrics)
    assert sorted(zip(metrics.trial_id, metrics.epoch)) == sorted(
        [(batch.trial_id, e) for e in (1, 2, 3)] + [(group.trial_id, e) for e in (1, 2)])
    assert metrics[["train_loss", "val_acc1", "lr"]].notna().all().all()
    assert set(rows.device) == {"cpu"} and rows.git_commit.str.len().min() >= 40
