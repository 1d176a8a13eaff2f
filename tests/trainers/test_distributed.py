"""`onorm train` under torchrun: 2 CPU processes (gloo) train one run with one process's
meaning, and resume exactly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
TIMING = ["epoch_time_s", "images_per_s"]


def onorm_train(data: Path, model_dir: Path, *extra: str, procs: int = 1) -> None:
    flags = ["train", "cifar10", str(data), "--model-dir", str(model_dir), "--norm-mode",
             "online", "-d", "8", "-b", "32", "--seed", "0", "-j", "0", "--device", "cpu",
             "-p", "0", *extra]
    if procs == 1:
        cmd = [sys.executable, "-m", "orchestrator.cli", *flags]
    else:
        cmd = [str(TORCHRUN), "--nproc-per-node", str(procs), "--master-port",
               str(free_port()), "-m", "orchestrator.cli", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(model_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(model_dir / "metrics.parquet").drop(columns=TIMING)


# about 60 s on 2 cores (three torchrun launches)
@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(),
                    reason="torchrun is not installed")
def test_torchrun_two_processes_write_one_process_metrics_and_resume_exactly(
        cifar10_dir, tmp_path):
    onorm_train(cifar10_dir, tmp_path / "one", "--epochs", "2")
    onorm_train(cifar10_dir, tmp_path / "two", "--epochs", "2", procs=2)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    # only the order of float32 sums differs (see tests/orchestrator/test_run_distributed.py)
    pd.testing.assert_frame_equal(one, two, rtol=1e-4)
    assert list(one.val_acc1) == list(two.val_acc1)
    # 1 epoch, then --resume for the second: bit for bit the 2-process run of 2 epochs
    onorm_train(cifar10_dir, tmp_path / "split", "--epochs", "1", procs=2)
    onorm_train(cifar10_dir, tmp_path / "split", "--epochs", "2", "--resume",
                str(tmp_path / "split"), procs=2)
    pd.testing.assert_frame_equal(metrics(tmp_path / "split"), two, check_exact=True)
