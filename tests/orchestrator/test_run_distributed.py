"""A trial on 2 workers through `onorm run` (Ray Train, gloo on CPU): every epoch recorded
once, the same metrics as one process, and a SIGKILLed driver's rerun resumes it."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from orch_helpers import driver, kill_tree, run_to_the_end, tiny_yaml

from orchestrator.execute.store import read_state
from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.trials import expand
from trainers.train import train

EPOCHS = 5
GRID = f"""
dist:
  dataset: cifar10
  data_dir: data
  synthetic: {{n_train: 128, n_test: 64}}
  resources: {{workers: 2, cpu: 1, gpu: 0}}
  settings: {{depth: 8, epochs: {EPOCHS}, batch_size: 32, lr_milestones: [3], workers: 0,
              device: cpu}}
  cells:
    - {{norm: online, seeds: 1}}
"""
# Only the order of float32 sums differs from one process (the per-rank conv gradient sums
# DDP averages, the per-rank statistics the normalizers all-gather): over these epochs that
# moves losses by about 1e-5 relative (measured: 2e-6 to 2e-5); accuracies are counts of
# 64 validation images and stay equal.
LOSS_RTOL = 1e-4


# about 150 s on 2 cores (two drivers, a Ray Train run of two workers and one of one)
@pytest.mark.slow
def test_two_workers_match_one_process_and_resume_after_the_driver_is_killed(
        ray_exclusive, tmp_path):
    config = tiny_yaml(tmp_path / "e.yaml", GRID)
    [trial] = expand(load_experiments(config)["dist"])
    results = tmp_path / "results"
    store = results / "dist" / "checkpoints" / trial.trial_id

    first = driver(config, "dist", results, tmp_path / "first.log")
    try:
        deadline = time.time() + 300
        while read_state(store)["epoch"] < 2:
            assert time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        kill_tree(first)
    stored = read_state(store)["epoch"]
    assert 2 <= stored < EPOCHS

    run_to_the_end(config, "dist", results, tmp_path / "second.log", timeout=400)
    rows = pd.read_parquet(results / "dist" / "trials.parquet").set_index("trial_id")
    row = rows.loc[trial.trial_id]
    assert row["status"] == "completed" and row["attempts"] == 2
    assert row["start_epoch"] == stored + 1   # resumed from the stored checkpoint
    metrics = pd.read_parquet(results / "dist" / "metrics.parquet")
    assert sorted(metrics.epoch.astype(int)) == list(range(1, EPOCHS + 1))   # each once

    one = []   # the same trial in one process, no Ray
    train(trial.config, lambda m, p: one.append(m), model_dir=tmp_path / "one",
          progress=False, print_freq=0, log=lambda line: None)
    one = pd.DataFrame(one).set_index("epoch")
    two = metrics.set_index("epoch").sort_index()
    for column in ("train_loss", "val_loss"):
        pd.testing.assert_series_equal(two[column], one[column], rtol=LOSS_RTOL,
                                       check_names=False, check_dtype=False)
    for column in ("train_acc1", "val_acc1", "val_acc5", "lr"):
        assert list(two[column]) == list(one[column]), column
