"""Ctrl-C on a running `onorm run`: a real SIGINT to the driver's process group, as a terminal
sends it. Exit 130, the trials that were running back to pending in trials.parquet, and the
same command then finishes them with one metrics row per (trial, epoch)."""

from __future__ import annotations

import os
import signal

import pandas as pd
import pytest
from orch_helpers import driver, interrupt, read_trials, run_to_the_end, tiny_yaml

from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.trials import expand

EPOCHS = 8   # long enough that both trials are still running when the signal comes
GRID = f"""
sigint:
  dataset: cifar10
  data_dir: data
  synthetic: {{n_train: 128, n_test: 64}}
  resources: {{cpu: 1, gpu: 0}}
  settings: {{depth: 8, epochs: {EPOCHS}, batch_size: 64, workers: 0, device: cpu}}
  cells:
    - {{norm: batch, seeds: 2}}
"""


# two drivers, each with its own local Ray: 67 s on 2 shared cores (load 1.3-4.3)
@pytest.mark.slow
def test_sigint_leaves_running_trials_pending_exits_130_and_a_rerun_finishes_them(
        ray_exclusive, tmp_path):
    config = tiny_yaml(tmp_path / "e.yaml", GRID)
    trials = expand(load_experiments(config)["sigint"])
    ids = sorted(t.trial_id for t in trials)
    results, log = tmp_path / "results", tmp_path / "first.log"
    trials_path = results / "sigint" / "trials.parquet"
    metrics_path = results / "sigint" / "metrics.parquet"
    proc = driver(config, "sigint", results, log, new_session=True)
    # the driver leads its own group (new_session), signalled whole as a terminal's Ctrl-C
    rows = interrupt(proc, log, trials_path, lambda rows: (
        (rows.status == "running") & (rows.epochs_done >= 1)).any(),
        lambda: os.killpg(proc.pid, signal.SIGINT), exit_code=130)
    running = sorted(rows.index[rows.status == "running"])
    rows = read_trials(trials_path)
    assert sorted(rows.index) == ids
    assert "running" not in set(rows.status)
    assert set(rows.loc[running, "status"]) == {"pending"}
    assert (rows.loc[running, "epochs_done"] >= 1).any()   # what ran is in the record
    assert (rows.epochs_done < EPOCHS).all()               # stopped mid-grid, not after it

    run_to_the_end(config, "sigint", results, tmp_path / "second.log")
    rows = read_trials(trials_path)
    assert set(rows.status) == {"completed"}
    assert (rows.epochs_done == EPOCHS).all()
    metrics = pd.read_parquet(metrics_path)
    assert not metrics.duplicated(["trial_id", "epoch"]).any()
    for trial_id in ids:
        assert sorted(metrics[metrics.trial_id == trial_id].epoch) == list(range(1, EPOCHS + 1))
