"""SIGKILL the `onorm run` driver mid-grid; the same command then finishes only what is missing.

Beside it: `onorm status` reads the running grid from another process, each trial's
TensorBoard scalars end with exactly one value per epoch, and neither driver's output holds
Ray's token notice or Tune's leaked result lines."""

from __future__ import annotations

import re
import struct
import time

import pandas as pd
from orch_helpers import (
    driver,
    kill_tree,
    read_trials,
    run_to_the_end,
    tensorboard_scalars,
    tiny_yaml,
)

from orchestrator.cli import main
from orchestrator.execute.store import read_state
from orchestrator.execute.trackers import TRACKED, run_name
from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.trials import expand

GRID = """
kill:
  dataset: cifar10
  data_dir: data
  synthetic: {n_train: 128, n_test: 64}
  resources: {cpu: 1, gpu: 0}
  max_concurrent: 2
  settings: {depth: 8, batch_size: 64, lr_milestones: [2], workers: 0, device: cpu}
  cells:
    - {norm: batch, epochs: 2, seeds: 1}
    - {norm: group, epochs: 12, seeds: 1}
    - {norm: batch, epochs: 2, seeds: [1]}
"""


def test_sigkill_driver_then_rerun_finishes_only_the_rest(ray_exclusive, tmp_path, capsys):
    config = tiny_yaml(tmp_path / "e.yaml", GRID)
    short, long, third = expand(load_experiments(config)["kill"])
    results = tmp_path / "results"
    trials_path = results / "kill" / "trials.parquet"
    metrics_path = results / "kill" / "metrics.parquet"

    first = driver(config, "kill", results, tmp_path / "first.log")
    try:
        deadline = time.time() + 180
        while True:
            assert time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            rows = read_trials(trials_path)
            if (rows is not None and rows.loc[short.trial_id, "status"] == "completed"
                    and 1 <= rows.loc[long.trial_id, "epochs_done"] <= 10):
                break
            time.sleep(0.1)
        # what `onorm status` says of it from here, while it runs
        assert main(["status", "kill", "--results", str(results)]) == 0
        status = capsys.readouterr().out
    finally:
        kill_tree(first)
    before = pd.read_parquet(metrics_path)
    recorded = int(before[before.trial_id == long.trial_id].epoch.max())
    # The store gets each epoch's checkpoint before Tune reports it, so a kill between the
    # two leaves the store an epoch or more ahead of metrics.parquet; never behind.
    stored = read_state(results / "kill" / "checkpoints" / long.trial_id)["epoch"]
    assert 1 <= recorded <= stored < 12

    log = run_to_the_end(config, "kill", results, tmp_path / "second.log")
    first_log = (tmp_path / "first.log").read_text()
    for out in (first_log, log):
        assert "Token authentication" not in out and "Last result" not in out, out[-3000:]

    head = status.splitlines()
    assert re.fullmatch(r"kill \(grid\): [12]/3 done, [12] running(, 1 pending)?; elapsed \S+, "
                        r"ETA \S+", head[0]), status
    assert head[1].startswith(f"  running: pid {first.pid}, started "), status
    row = next(ln for ln in head if ln.startswith(f"  {long.trial_id}")).split()
    assert row[1:5] == ["group", "groups=8", "0", "running"] and \
        1 <= int(row[5].split("/")[0]) <= 11 and row[5].endswith("/12"), status

    rows = pd.read_parquet(trials_path).set_index("trial_id")
    assert set(rows.status) == {"completed"} and len(rows) == 3
    # the completed trial was skipped, not retrained: same rows, one attempt
    assert f"skip {short.trial_id} (completed)" in log
    assert f"{short.trial_id} started" not in log
    after = pd.read_parquet(metrics_path)
    pd.testing.assert_frame_equal(
        before[before.trial_id == short.trial_id].reset_index(drop=True),
        after[after.trial_id == short.trial_id].reset_index(drop=True))
    assert rows.loc[short.trial_id, "attempts"] == 1
    # the interrupted trial resumed right after its last stored checkpoint
    assert rows.loc[long.trial_id, "attempts"] == 2
    resumed_at = int(rows.loc[long.trial_id, "start_epoch"])
    assert resumed_at == stored + 1
    first_epoch_line = next(ln for ln in log.splitlines() if f"{long.trial_id} epoch" in ln)
    assert f"epoch {resumed_at}/12" in first_epoch_line
    # exactly one row per (trial, epoch), every epoch of every trial
    expected = sorted([(short.trial_id, e) for e in (1, 2)] + [(third.trial_id, e) for e in (1, 2)]
                      + [(long.trial_id, e) for e in range(1, 13)])
    assert sorted(zip(after.trial_id, after.epoch.astype(int))) == expected
    # TensorBoard: one event per epoch of each trial, continuous across the kill, holding
    # the recorded values (float32)
    for trial in (short, long, third):
        events = tensorboard_scalars(results / "kill" / "tensorboard" / run_name(trial))
        rows = after[after.trial_id == trial.trial_id].set_index("epoch")
        assert [step for step, _ in events] == list(rows.index), trial.trial_id
        for step, values in events:
            assert values == {k: struct.unpack("<f", struct.pack("<f", rows.loc[step, k]))[0]
                              for k in TRACKED}
