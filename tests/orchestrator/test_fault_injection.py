"""Damaged files in an experiment folder, each followed by a rerun of `onorm run`: every
trial ends completed and every recorded epoch intact, nothing beyond a damaged checkpoint's
own epoch is trained again.

One grid is run once for the module (a 2-epoch trial completes; a 3-epoch trial's worker
dies after epoch 2 and, with max_failures 0, the trial fails); each test damages a copy.
And an error that fails the same way on every try is not retried.
"""

from __future__ import annotations

import shlex
import shutil
import struct
from pathlib import Path

import pandas as pd
import pytest
from orch_helpers import TINY_SETTINGS, tiny_yaml, worker_dies

from orchestrator.cli import main
from orchestrator.execute.live import LiveView
from orchestrator.execute.runner import run_trials
from orchestrator.execute.store import checkpoint_name, read_state
from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.trials import expand, make_trial
from trainers.config import make_config

GRID = """
fi:
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
# what a retrained epoch reproduces exactly (seeded); its timings differ
VALUES = ["epoch", "lr", "train_loss", "train_acc1", "train_acc5", "val_loss", "val_acc1",
          "val_acc5"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, ray_module):
    root = tmp_path_factory.mktemp("fault")
    config = tiny_yaml(root / "e.yaml", GRID)
    done, partial = expand(load_experiments(config)["fi"])
    with worker_dies([partial], after_epoch=2):
        summary = run_trials("fi", [done, partial], root / "results", max_failures=0,
                             live=LiveView("fi", tty=False))
    assert summary.counts == {"completed": 1, "failed": 1}
    metrics = pd.read_parquet(summary.layout.metrics)
    assert sorted(zip(metrics.trial_id, metrics.epoch)) == sorted(
        [(done.trial_id, 1), (done.trial_id, 2), (partial.trial_id, 1), (partial.trial_id, 2)])
    # the failure names the traceback kept in the experiment's ray/ folder, not Ray's staging
    # copy under /tmp/ray that goes with the session
    error = pd.read_parquet(summary.layout.trials).set_index("trial_id").loc[
        partial.trial_id, "error"]
    traceback = Path(error.rsplit("(traceback: ", 1)[1].rstrip(")"))
    assert traceback.is_relative_to(summary.layout.ray) and traceback.is_file(), error
    return root, config, done, partial


def copy_of(first_run, tmp_path):
    root, config, done, partial = first_run
    results = tmp_path / "results"
    shutil.copytree(root / "results", results, ignore=shutil.ignore_patterns("ray"))
    return results, results / "fi", config, done, partial


def rerun(capsys, config, results, *extra) -> tuple[int, str]:
    code = main(["run", "fi", "--config", str(config), "--results", str(results), *extra])
    return code, capsys.readouterr().err


def by_trial(path, trial_id) -> pd.DataFrame:
    df = pd.read_parquet(path)
    return df[df.trial_id == trial_id].sort_values("epoch").reset_index(drop=True)


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(first_run, tmp_path, capsys):
    results, exp, config, done, partial = copy_of(first_run, tmp_path)
    before = by_trial(exp / "metrics.parquet", partial.trial_id)
    latest = exp / "checkpoints" / partial.trial_id / checkpoint_name(2)
    size = latest.stat().st_size
    latest.write_bytes(latest.read_bytes()[:size // 2])

    code, err = rerun(capsys, config, results)
    assert code == 0, err
    warning = (f"[fi] warning: trial {partial.trial_id}: the checkpoint of epoch 2 is damaged "
               f"({size // 2} bytes, checksum mismatch): resuming from epoch 1's checkpoint; "
               "epoch 2 is trained again")
    assert err.count(warning) == 1, err
    rows = pd.read_parquet(exp / "trials.parquet").set_index("trial_id")
    assert set(rows.status) == {"completed"}
    # the failed attempt and this one; the retrain began right after the intact checkpoint
    assert rows.loc[partial.trial_id, "attempts"] == 2
    assert rows.loc[partial.trial_id, "start_epoch"] == 2
    after = by_trial(exp / "metrics.parquet", partial.trial_id)
    assert list(after.epoch) == [1, 2, 3]
    pd.testing.assert_frame_equal(after.iloc[:1], before.iloc[:1])       # untouched
    pd.testing.assert_frame_equal(after.loc[:1, VALUES], before[VALUES])  # epoch 2 the same
    assert len(list(latest.parent.glob(f"{latest.name}.damaged-*"))) == 1


def test_damaged_parquet_files_are_rebuilt_from_the_store(first_run, tmp_path, capsys):
    results, exp, config, done, partial = copy_of(first_run, tmp_path)
    metrics_before = pd.read_parquet(exp / "metrics.parquet")
    trials = exp / "trials.parquet"
    trials.write_bytes(trials.read_bytes()[:trials.stat().st_size // 3])
    # the dry run lists from the store alone and says how to rebuild the file
    code, err = rerun(capsys, config, results, "--dry-run")
    assert code == 0 and err.count("\n") == 1 and f"warning: {trials} is damaged (" in err, err

    # a truncated trials.parquet: the store still knows `done` is completed
    code, err = rerun(capsys, config, results)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "was damaged" in ln]
    assert len(lines) == 1 and lines[0].startswith("[fi] trials.parquet was damaged (")
    assert "rebuilt it from the trial store (2 rows)" in lines[0]
    assert f"skip {done.trial_id} (completed)" in err and f"{done.trial_id} started" not in err
    rows = pd.read_parquet(trials).set_index("trial_id")
    assert set(rows.status) == {"completed"}
    assert rows.loc[partial.trial_id, "start_epoch"] == 3   # nothing retrained
    assert rows.loc[done.trial_id, "attempts"] == 1
    metrics = pd.read_parquet(exp / "metrics.parquet")
    pd.testing.assert_frame_equal(metrics.iloc[:4].reset_index(drop=True),
                                  metrics_before.reset_index(drop=True))
    assert len(metrics) == 5

    # a truncated metrics.parquet: `onorm table` says which command rebuilds it, and it does
    complete = pd.read_parquet(exp / "metrics.parquet")
    path = exp / "metrics.parquet"
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    assert main(["table", str(exp)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{path} is damaged (" in err
    fix = err.split("`")[1]
    assert fix == shlex.join(["onorm", "run", "fi", "--config", str(config), "--results",
                              str(results)])
    assert main(shlex.split(fix)[1:]) == 0          # all done: no Ray, just the rebuild
    assert "metrics.parquet was damaged" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_parquet(path), complete)

    # one flipped bit in a stored value: caught by its page checksum, repaired the same way
    # (a loss neither the column's min nor max: its bytes are in a data page, not statistics)
    data = path.read_bytes()
    losses = complete.train_loss
    inner = losses[(losses > losses.min()) & (losses < losses.max())]
    value = struct.pack("<d", float(inner.iloc[0]))
    assert data.count(value) == 1
    at = data.index(value) + 3
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:])
    code, err = rerun(capsys, config, results)
    assert code == 0 and "metrics.parquet was damaged" in err, err
    pd.testing.assert_frame_equal(pd.read_parquet(path), complete)
    assert len(list(exp.glob("metrics.parquet.damaged-*"))) == 2


def test_a_deterministic_error_fails_the_trial_once_not_max_failures_times(ray_module,
                                                                         tmp_path):
    # a dataset missing where the trial runs fails the same way on every try
    missing = tmp_path / "no" / "cifar"
    config = make_config("cifar10", str(missing), epochs=1, seed=0, **TINY_SETTINGS)
    trial = make_trial(config, {"cpu": 1.0, "gpu": 0.0})
    summary = run_trials("bad", [trial], tmp_path / "results", max_failures=2,
                         live=LiveView("bad", tty=False))
    assert summary.counts == {"failed": 1} and summary.exit_code == 1
    row = pd.read_parquet(summary.layout.trials).iloc[0]
    assert row["attempts"] == 1
    assert row["error"] == (f"CIFAR-10 data folder {missing} does not exist, nor does its "
                            f"parent {missing.parent}: check the path (a download goes only "
                            "into a folder that exists or whose parent exists)")
    assert read_state(summary.layout.trial_store(trial.trial_id))["outcome"] == "failed"
