"""SIGTERM (`ray job stop`, Kubernetes) stops `onorm run` the way Ctrl-C does: running trials
back to pending, the record flushed, the resume hint, and exit 143 (128 + SIGTERM)."""

from __future__ import annotations

import signal

from orch_helpers import driver, interrupt, read_trials, tiny_yaml

from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.trials import expand

GRID = """
term:
  dataset: cifar10
  data_dir: data
  synthetic: {n_train: 128, n_test: 64}
  resources: {cpu: 1, gpu: 0}
  max_failures: -1
  settings: {depth: 8, epochs: 300, batch_size: 64, workers: 0, device: cpu}
  cells:
    - {norm: batch, seeds: 2}
"""


# about 30 s on 2 cores (one driver with its own local Ray)
def test_sigterm_leaves_running_trials_pending_and_exits_143(ray_exclusive, tmp_path):
    config = tiny_yaml(tmp_path / "e.yaml", GRID)
    trials = expand(load_experiments(config)["term"])
    results, log = tmp_path / "results", tmp_path / "driver.log"
    trials_path = results / "term" / "trials.parquet"
    proc = driver(config, "term", results, log)
    interrupt(proc, log, trials_path, lambda rows: (rows.epochs_done >= 1).any(),
              lambda: proc.send_signal(signal.SIGTERM), exit_code=143)
    rows = read_trials(trials_path)
    assert sorted(rows.index) == sorted(t.trial_id for t in trials)
    assert set(rows.status) == {"pending"}           # none left marked running
    assert (rows.epochs_done >= 1).any()             # what ran is in the record
    assert (rows.epochs_done < 300).all()
