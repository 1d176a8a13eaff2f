"""A plugin normalizer declared through an entry point trains in a grid and shows in its table."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from norm_plugin import PATH
from orch_helpers import tiny_yaml

from orchestrator.cli import main
from orchestrator.cli.launch import prepare_data
from orchestrator.execute.live import LiveView
from orchestrator.execute.runner import run_trials
from orchestrator.execute.store import TrialStore, checkpoint_name
from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.trials import expand

GRID = """
plug:
  dataset: cifar10
  data_dir: data
  synthetic: {n_train: 128, n_test: 64}
  resources: {cpu: 1, gpu: 0}
  settings: {depth: 8, epochs: 2, batch_size: 64, lr_milestones: [1], workers: 0, device: cpu}
  cells:
    - {norm: mynorm, seeds: 1}
    - {norm: batch, seeds: 1}
"""


def test_an_entry_point_normalizer_runs_in_a_grid_and_its_table(norm_plugin, ray_exclusive,
                                                                 tmp_path, capsys):
    config = tiny_yaml(tmp_path / "e.yaml", GRID)
    experiment = load_experiments(config)["plug"]
    plugin, batch = expand(experiment)
    assert (plugin.config.norm, plugin.config.norm_path) == ("mynorm", PATH)
    # the cell could name the class itself: the same trial
    by_path = tiny_yaml(tmp_path / "p.yaml", GRID.replace("norm: mynorm", f"norm: {PATH!r}"))
    assert expand(load_experiments(by_path)["plug"])[0].trial_id == plugin.trial_id
    # the dry run shows what the name imports
    assert main(["run", "plug", "--dry-run", "--config", str(config), "--results",
                 str(tmp_path / "results")]) == 0
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if plugin.trial_id in ln]
    assert f"│ mynorm │ {PATH} " in line

    results = tmp_path / "results"
    prepare_data(experiment, [plugin, batch], None)
    # Ray starts here, after the plugin is installed, so its workers import it too
    summary = run_trials("plug", [plugin, batch], results, live=LiveView("plug", tty=False))
    assert summary.counts == {"completed": 2}
    rows = pd.read_parquet(results / "plug" / "trials.parquet").set_index("trial_id")
    assert rows.loc[plugin.trial_id, "norm"] == "mynorm"
    assert json.loads(rows.loc[plugin.trial_id, "config_json"])["norm_path"] == PATH
    metrics = pd.read_parquet(results / "plug" / "metrics.parquet")
    mine = metrics[metrics.trial_id == plugin.trial_id]
    assert sorted(mine.epoch) == [1, 2]
    # it trained MyNorm layers: affine per channel, no running statistics
    trial_dir = TrialStore(results / "plug" / "checkpoints").trial_dir(plugin.trial_id)
    state = torch.load(trial_dir / checkpoint_name(2), weights_only=True)
    assert state["model"]["bn1.weight"].shape == (16,)
    assert not any(k.endswith("running_mean") for k in state["model"])
    # its table row, by its name
    assert main(["table", "plug", "--results", str(results), "--metric", "accuracy"]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("| CIFAR10 | ResNet8 | mynorm |")]
    best = mine.val_acc1.max()
    assert f" | {int(mine.epoch[mine.val_acc1 == best].min())} | 2 | {best:.2f} | N/A |" in row


def test_a_plugin_that_cannot_build_is_refused_before_ray(norm_plugin, tmp_path, capsys,
                                                         monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was called"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    config = tiny_yaml(tmp_path / "e.yaml", GRID.replace("norm: mynorm",
                                                         "norm: 'mypkg.layers:broken'"))
    assert main(["run", "plug", "--config", str(config), "--results",
                 str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == (
        "onorm run: error: experiment 'plug', key 'cells[0].norm': normalizer "
        "'mypkg.layers:broken' failed to build a layer of 16 channels (RuntimeError: no "
        "layer today)\n")
    assert not (tmp_path / "r").exists()
