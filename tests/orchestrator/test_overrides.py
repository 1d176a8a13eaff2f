"""`onorm run|tune --set KEY=VALUE --only KEY=VALUE,...`: exactly the trials they should change
or select (their ids as --dry-run lists them), the file's checks and errors, the record."""

from __future__ import annotations

import re

import pytest
import yaml
from orch_helpers import tiny_yaml

from orchestrator.cli import main
from orchestrator.execute.store import TrialStore
from orchestrator.layout import ExperimentLayout
from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.trials import expand
from orchestrator.report.results import rebuild_command

ID = re.compile(r"│ ([0-9a-f]{12}) │")


def listed(capsys, config, *flags, experiment="tiny", results="unused"):
    """The trial ids `onorm run --dry-run` lists, and its whole output."""
    assert main(["run", experiment, "--dry-run", "--config", str(config), "--results",
                 str(results), *flags]) == 0
    out = capsys.readouterr().out
    return ID.findall(out), out


def ids_of(config, experiment="tiny"):
    return [t.trial_id for t in expand(load_experiments(config)[experiment])]


@pytest.fixture
def config(tmp_path):
    return tiny_yaml(tmp_path / "e.yaml")   # batch x 2 seeds, online x 1, 3 epochs


def test_a_set_gives_the_ids_of_the_same_change_written_in_the_file(config, tmp_path, capsys):
    batch0, batch1, online0 = ids_of(config)
    assert listed(capsys, config)[0] == [batch0, batch1, online0]
    # a shared setting: every trial is another trial, the one the edited file would give
    ids, out = listed(capsys, config, "--set", "settings.epochs=2")
    edited = tiny_yaml(tmp_path / "f.yaml", config.read_text().replace("epochs: 3", "epochs: 2"))
    assert ids == ids_of(edited) and not set(ids) & {batch0, batch1, online0}
    assert "--set settings.epochs=2" in out
    # one normalizer's cells: batch keeps its ids, online keeps seed 0 and gains seed 1
    ids, _ = listed(capsys, config, "--set", "cells.online.seeds=2")
    assert ids[:3] == [batch0, batch1, online0] and len(ids) == 4
    # by index, with YAML values: a fraction, a list; and a cell appended
    ids, _ = listed(capsys, config, "--set", "cells[1].afwd=511/512", "--set",
                    "cells[2]={norm: group, gn_num_groups: 4, seeds: 1}")
    edited = tiny_yaml(tmp_path / "g.yaml", config.read_text().replace(
        'afwd: "1023/1024"', 'afwd: "511/512"') + "    - {norm: group, gn_num_groups: 4}\n")
    assert ids == ids_of(edited) and ids[:2] == [batch0, batch1] and online0 not in ids


def test_only_lists_exactly_the_matching_trials(config, capsys):
    batch0, batch1, online0 = ids_of(config)
    ids, out = listed(capsys, config, "--only", "norm=online,seed=0")
    assert ids == [online0] and "--only norm=online,seed=0: 1 of 3 trials" in out
    assert listed(capsys, config, "--only", "norm=batch,seed=1", "--only",
                  "afwd=1023/1024,norm=online")[0] == [batch1, online0]
    assert listed(capsys, config, "--only", f"trial_id={batch0}")[0] == [batch0]
    assert listed(capsys, config, "--only", "lr_milestones=[2],seed=1")[0] == [batch1]
    # after a --set, on what it made
    ids, _ = listed(capsys, config, "--set", "cells.batch.seeds=[5, 6]", "--only", "seed=6")
    assert len(ids) == 1 and ids[0] not in (batch0, batch1, online0)


K = "onorm run: error: experiment 'tiny', key "


@pytest.mark.parametrize("flags, line", [
    (["--set", "settings.epochs=0"],
     K + "'settings.epochs': expected an integer in [1, 100000], got 0 (set by --set "
         "settings.epochs=0)"),
    (["--set", "cells.online.afwd=1.5"],
     K + "'cells[1].afwd': expected a number in (0, 1), got 1.5 (set by --set "
         "cells.online.afwd=1.5)"),
    (["--set", "cells.batch.afwd=0.5"],
     K + "'cells[0].afwd': afwd applies only to norm online, not to batch: remove it from this "
         "cell (set by --set cells.batch.afwd=0.5)"),
    (["--set", "settings.bogus=1"],
     "onorm run: error: experiment 'tiny': unknown key 'bogus' in settings; allowed: "),
    (["--set", "epochs=2"],
     "a trial setting goes under settings: --set settings.epochs=... (or "
     "cells.NORM.epochs=... for one normalizer's cells)"),
    (["--set", "cells.bach.seeds=2"],
     "onorm run: error: experiment 'tiny', --set cells.bach.seeds=2: no cell has norm 'bach' "
     "(the cells' norms: batch, online); name a cell as cells.NORM.KEY or cells[i].KEY"),
    (["--set", "cells[3].seeds=1"],
     "--set cells[3].seeds=1: cells has 2 items: index 3 is out of range (cells[2] appends "
     "one)"),
    (["--set", "settings.epochs.x=1"], "--set settings.epochs.x=1: settings.epochs is the "
                                       "value 3, not a mapping"),
    (["--set", "settings..epochs=1"], "'settings..epochs' is not a key path"),
    (["--set", "settings.epochs"], "--set 'settings.epochs': expected KEY=VALUE, e.g. --set "
                                   "settings.epochs=10"),
    (["--set", "settings.lr=[1,"], "--set settings.lr=[1,: '[1,' is not a YAML value"),
    (["--only", "norm=layer"],
     "onorm run: error: experiment 'tiny': --only norm=layer selects none of its 3 trials "
     "(norm: batch, online)"),
    (["--only", "norm=batch", "--only", "seed=7,norm=online"],
     "--only seed=7,norm=online selects none of its 3 trials (seed: 0, 1; norm: batch, "
     "online)"),
    (["--only", "colour=red"], "--only colour=red: unknown key 'colour'; filter on norm, "
                               "seed, trial_id or a trial setting (abkw, afwd,"),
    (["--only", "seed=first"], "--only seed=first: seed expects an integer in [0, "
                               "4294967295] or null, got 'first'"),
])
def test_a_bad_override_or_filter_is_one_line_and_writes_nothing(flags, line, config,
                                                                 tmp_path, capsys):
    results = tmp_path / "results"
    for dry in ([], ["--dry-run"]):
        code = main(["run", "tiny", "--config", str(config), "--results", str(results),
                     *dry, *flags])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert line in err
    assert not results.exists() and not (tmp_path / "data").exists()


def test_the_run_records_what_was_overridden_and_selected(config, tmp_path, capsys,
                                                           monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was called"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    flags = ["--set", "settings.epochs=2", "--only", "norm=online"]
    results = tmp_path / "results"
    [online] = listed(capsys, config, *flags, results=results)[0]
    # the selected trial has run already: the run goes ahead, skips it, starts no Ray
    layout = ExperimentLayout.of(results, "tiny")
    store = TrialStore(layout.store)
    store.begin(online)
    store.finish(online, "completed")
    assert main(["run", "tiny", "--config", str(config), "--results", str(results),
                 *flags]) == 0
    resolved = yaml.safe_load(layout.resolved.read_text())
    assert resolved["overrides"] == ["settings.epochs=2"] and resolved["only"] == ["norm=online"]
    assert resolved["settings"]["epochs"] == 2
    assert [t["trial_id"] for t in resolved["trials"]] == [online]
    assert rebuild_command(layout).endswith(
        f"--config {config} --set settings.epochs=2 --only norm=online --results {results}")
    assert "1 trials: 1 completed" in capsys.readouterr().out


def test_tune_takes_set_and_only(tmp_path, capsys):
    config = tiny_yaml(tmp_path / "t.yaml", """
search:
  kind: tune
  dataset: cifar10
  data_dir: data
  synthetic: {n_train: 128, n_test: 64}
  settings: {depth: 8, epochs: 3, batch_size: 64, workers: 0, device: cpu}
  space: {afwd: {dyadic: [8, 9]}, abkw: {dyadic: [4, 5]}}
""")
    argv = ["tune", "search", "--dry-run", "--config", str(config), "--results",
            str(tmp_path / "r")]
    assert main(argv) == 0
    every = ID.findall(capsys.readouterr().out)
    assert len(every) == 4
    assert main(argv + ["--set", "space.afwd.dyadic=[8, 8]", "--only", "abkw=31/32"]) == 0
    out = capsys.readouterr().out
    assert ID.findall(out) == [every[1]] and "afwd=255/256 abkw=31/32" in out
    assert main(argv + ["--set", "seeds=2"]) == 0
    assert len(ID.findall(capsys.readouterr().out)) == 8
