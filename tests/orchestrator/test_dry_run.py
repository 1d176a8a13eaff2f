"""`onorm run --dry-run`: every trial listed with done/partial/new, without ray or torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
from orch_helpers import tiny_yaml

from orchestrator.execute.store import TrialStore
from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.trials import expand

REPO = Path(__file__).resolve().parents[2]


def test_dry_run_lists_statuses_without_importing_ray_or_torch(tmp_path):
    config = tiny_yaml(tmp_path / "e.yaml")
    trials = expand(load_experiments(config)["tiny"])
    done, partial, fresh = trials
    exp_dir = tmp_path / "results" / "tiny"
    exp_dir.mkdir(parents=True)
    # done: recorded completed in trials.parquet; partial: a stored checkpoint after epoch 2
    pd.DataFrame([{"trial_id": done.trial_id, "status": "completed", "epochs_done": 3},
                  {"trial_id": fresh.trial_id, "status": "pending", "epochs_done": 0}]
                 ).to_parquet(exp_dir / "trials.parquet")
    store = TrialStore(exp_dir / "checkpoints")
    store.begin(partial.trial_id)
    store.put(partial.trial_id, 2, b"weights", {"epoch": 2})

    code = (
        "import sys\n"
        "from orchestrator.cli import main\n"
        f"rc = main(['run', 'tiny', '--dry-run', '--config', {str(config)!r}, "
        f"'--results', {str(tmp_path / 'results')!r}])\n"
        "print(json.dumps({'rc': rc, 'ray': 'ray' in sys.modules, "
        "'torch': 'torch' in sys.modules}))\n")
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=REPO,
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"rc": 0, "ray": False, "torch": False}
    rows = {t.trial_id: next(ln for ln in lines if t.trial_id in ln) for t in trials}
    assert "done completed" in rows[done.trial_id]
    assert "partial 2/3" in rows[partial.trial_id]
    assert rows[fresh.trial_id].rstrip(" │").endswith("new")
    assert "online" in rows[trials[2].trial_id] and "afwd=1023/1024" in rows[trials[2].trial_id]
    assert "1 done, 1 new, 1 partial" in out.stdout


def test_dry_run_warns_but_lists_when_the_dataset_is_missing(tmp_path, capsys):
    from orchestrator.cli import main

    rc = main(["run", "cifar10", "--dry-run", "--config", str(REPO / "experiments.yaml"),
               "--data-dir", str(tmp_path / "nowhere"), "--results", str(tmp_path / "r")])
    out = capsys.readouterr()
    assert rc == 0
    assert "13 trials" in out.out and "13 new" in out.out
    assert "does not exist" in out.err
