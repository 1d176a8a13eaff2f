"""experiments.yaml: the shipped experiments, expansion into trials, and bad-input messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from orch_helpers import tiny_yaml

from orchestrator.cli import main
from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.trial_id import make_trial_id
from orchestrator.plan.trials import expand

REPO = Path(__file__).resolve().parents[2]


def test_shipped_paper_grids_match_the_paper():
    exps = load_experiments(REPO / "experiments.yaml")
    assert {"cifar10", "cifar100", "imagenet", "demo"} <= set(exps)
    c10 = expand(exps["cifar10"])
    by_norm = {}
    for t in c10:
        by_norm.setdefault(t.config.norm, []).append(t)
    assert {k: len(v) for k, v in by_norm.items()} == {
        "online": 5, "batch": 5, "layer": 1, "instance": 1, "group": 1}
    online = by_norm["online"][0].config
    assert online.afwd == 1023 / 1024 and online.abkw == 127 / 128 and online.ecm == "ls"
    assert (online.depth, online.epochs, online.batch_size, online.lr, online.momentum,
            online.weight_decay, online.lr_milestones, online.lr_multiplier) == (
        20, 250, 128, 0.1, 0.9, 2e-4, (100, 150, 200), 0.1)
    assert by_norm["group"][0].config.gn_num_groups == 8
    assert sorted(t.config.seed for t in by_norm["batch"]) == [0, 1, 2, 3, 4]
    c100 = [t.config for t in expand(exps["cifar100"]) if t.config.norm == "online"]
    assert c100[0].afwd == 511 / 512 and c100[0].abkw == 15 / 16
    imagenet = expand(exps["imagenet"])
    assert sorted(t.config.norm for t in imagenet) == ["batch", "online"]
    cfg = imagenet[0].config
    assert (cfg.arch, cfg.epochs, cfg.batch_size, cfg.weight_decay, cfg.lr_milestones,
            cfg.gn_num_groups) == ("resnet50", 100, 256, 1e-4, (30, 60, 80), 32)
    demo = expand(exps["demo"])
    assert {t.config.norm for t in demo} == {"batch", "group", "layer", "instance", "online",
                                              "none"}
    assert all(t.resources == {"cpu": 1.0, "gpu": 0.0, "workers": 1} for t in demo)
    assert exps["cifar10"].resources == {"cpu": 2.0, "gpu": 0.25, "workers": 1}
    assert imagenet[0].resources == {"cpu": 8.0, "gpu": 1.0, "workers": 8}


def test_trial_id_ignores_where_the_data_lives_but_not_settings(tmp_path):
    exps = load_experiments(tiny_yaml(tmp_path / "e.yaml"))
    a = expand(exps["tiny"])
    b = expand(exps["tiny"], data_dir=str(tmp_path / "elsewhere"))
    assert [t.trial_id for t in a] == [t.trial_id for t in b]
    assert len({t.trial_id for t in a}) == 3
    changed = a[0].config.replace(lr=0.05)
    assert make_trial_id(changed, a[0].synthetic) != a[0].trial_id
    assert make_trial_id(a[0].config.replace(workers=7), a[0].synthetic) == a[0].trial_id
    # relative data_dir resolves against the yaml's folder
    assert a[0].config.data_dir == str((tmp_path / "data" / "synthetic-128-64").resolve())


def test_cpu_only_drops_gpus(tmp_path):
    exps = load_experiments(REPO / "experiments.yaml")
    trials = expand(exps["cifar10"], cpu_only=True)
    assert all(t.resources["gpu"] == 0 and t.resources["cpu"] >= 1 for t in trials)


def test_cpu_only_moves_a_config_pinned_to_cuda_and_keeps_its_trial_id(tmp_path):
    path = tiny_yaml(tmp_path / "e.yaml", """
tiny:
  dataset: cifar10
  data_dir: data
  resources: {cpu: 2, gpu: 1}
  settings: {device: "cuda:0"}
  cells:
    - {norm: batch, seeds: 1}
""")
    experiment = load_experiments(path)["tiny"]
    [on_gpu], [on_cpu] = expand(experiment), expand(experiment, cpu_only=True)
    assert on_gpu.config.device == "cuda:0"
    assert on_gpu.resources == {"cpu": 2, "gpu": 1, "workers": 1}
    assert on_cpu.config.device == "cpu" and on_cpu.resources == {"cpu": 2, "gpu": 0, "workers": 1}
    assert on_cpu.trial_id == on_gpu.trial_id


def run_cli(capsys, tmp_path, body: str, experiment: str = "tiny", extra=()) -> tuple[int, str]:
    path = tiny_yaml(tmp_path / "bad.yaml", body)
    code = main(["run", experiment, "--config", str(path), "--dry-run",
                 "--results", str(tmp_path / "r"), *extra])
    err = capsys.readouterr().err.strip()
    return code, err


GOOD = """
tiny:
  dataset: cifar10
  data_dir: data
  synthetic: {n_train: 128, n_test: 64}
  settings: {depth: 8, epochs: 3}
  cells:
    - {norm: batch, seeds: 2}
"""


@pytest.mark.parametrize("old, new, expected", [
    ("  settings:", "  setings: {}\n  settings:", "unknown key 'setings' in the experiment"),
    ("epochs: 3", "epochs: three", "key 'settings.epochs': expected an integer"),
    ("epochs: 3", "epochs: 3, lr: fast", "key 'settings.lr': expected a number or a fraction"),
    ("epochs: 3", "epochs: 3, lr: .nan", "key 'settings.lr': expected a finite number"),
    ("epochs: 3", "epochs: 3, lr_multiplier: -.inf",
     "key 'settings.lr_multiplier': expected a finite number"),
    ("{norm: batch, seeds: 2}", "{norm: batchnorm}", "unknown normalizer 'batchnorm'; choose"),
    ("    - {norm: batch, seeds: 2}", "    []", "empty grid"),
    ("  cells:\n    - {norm: batch, seeds: 2}", "  cells: []", "empty grid"),
    ("seeds: 2", "seeds: 2, colour: red", "unknown key 'colour' in cells[0]"),
    ("data_dir: data", "data_dir: 5", "key 'data_dir': expected a folder path"),
    ("  synthetic: {n_train: 128, n_test: 64}\n", "  resources: {cpu: 1, gpu: -1}\n",
     "key 'resources.gpu': must be >= 0"),
    ("  synthetic: {n_train: 128, n_test: 64}\n", "  resources: {cpu: 1, tpu: 1}\n",
     "unknown key 'tpu' in resources"),
    ("dataset: cifar10", "dataset: mnist", "key 'dataset': expected one of cifar10"),
    # options of another normalizer kind would change the trial id and retrain for nothing
    ("{norm: batch, seeds: 2}", "{norm: batch, seeds: 2, afwd: 2/3}",
     "key 'cells[0].afwd': afwd applies only to norm online, not to batch"),
    ("{norm: batch, seeds: 2}", "{norm: online, gn_num_groups: 4}",
     "key 'cells[0].gn_num_groups': gn_num_groups applies only to norm group, not to online"),
    ("epochs: 3", "epochs: 3, lr: -1", "key 'settings.lr': expected a number > 0, got -1"),
    ("epochs: 3", "epochs: 3, ecm: lsx", "key 'settings.ecm': expected one of ls, ac, none"),
])
def test_bad_experiments_file_gives_one_line_and_nonzero_exit(capsys, tmp_path, old, new,
                                                               expected):
    assert old in GOOD
    code, err = run_cli(capsys, tmp_path, GOOD.replace(old, new))
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert "experiment 'tiny'" in err and expected in err, err


def test_unknown_experiment_lists_available(capsys, tmp_path):
    code, err = run_cli(capsys, tmp_path, GOOD, experiment="tinny")
    assert code != 0 and len(err.splitlines()) == 1
    assert "unknown experiment 'tinny': available: tiny" in err


def test_an_error_in_another_experiment_does_not_block_a_good_one(capsys, tmp_path):
    # Only the experiment being run must be valid; the file's others need only parse (issue
    # 13; this test used to expect the whole file checked). The broken one is refused when run.
    body = GOOD + "broken:\n  dataset: cifar10\n  data_dir: d\n  cells: [{norm: lyaer}]\n"
    code, err = run_cli(capsys, tmp_path, body)
    assert code == 0 and err == ""
    code, err = run_cli(capsys, tmp_path, body, experiment="broken")
    assert code != 0 and "experiment 'broken'" in err and "'lyaer'" in err


def test_missing_data_dir_is_refused_before_anything_starts(capsys, tmp_path):
    body = GOOD.replace("  synthetic: {n_train: 128, n_test: 64}\n", "")
    path = tiny_yaml(tmp_path / "e.yaml", body)
    code = main(["run", "tiny", "--config", str(path), "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1
    assert "data_dir" in err and "does not exist" in err and "--data-dir" in err
    assert not (tmp_path / "r").exists()


def test_fraction_strings_are_exact_and_code_is_not_evaluated(capsys, tmp_path):
    exps = load_experiments(tiny_yaml(tmp_path / "e.yaml"))
    online = [t for t in expand(exps["tiny"]) if t.config.norm == "online"][0]
    assert online.config.afwd == 1023 / 1024
    body = GOOD.replace("epochs: 3", "epochs: 3, afwd: '1 - 2**-10'")
    code, err = run_cli(capsys, tmp_path, body)
    assert code != 0 and "settings.afwd" in err


def test_a_second_run_of_a_running_experiment_is_refused(capsys, tmp_path):
    from orchestrator.execute.lock import experiment_lock

    config = tiny_yaml(tmp_path / "e.yaml")
    results = tmp_path / "r"
    with experiment_lock(results / "tiny"):   # as a run in another process holds it
        code = main(["run", "tiny", "--config", str(config), "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "another run of 'tiny' is writing" in err and "--results" in err
    assert not (results / "tiny" / "trials.parquet").exists()   # it wrote nothing
    with experiment_lock(results / "tiny"):   # released with its holder
        pass


def test_outside_a_checkout_the_installed_experiments_file_is_used(tmp_path, monkeypatch,
                                                                   capsys):
    from orchestrator.plan.experiments import PACKAGED_CONFIG, default_config_path

    monkeypatch.chdir(tmp_path)   # no ./experiments.yaml here
    assert default_config_path() == PACKAGED_CONFIG and PACKAGED_CONFIG.is_file()
    # its relative data folders are the current folder's, not the install's
    assert load_experiments()["demo"].data_dir == str(tmp_path / "data" / "demo-cifar10")
    assert main(["run", "demo", "--dry-run"]) == 0
    assert "demo: 8 trials" in capsys.readouterr().out
    (tmp_path / "experiments.yaml").write_text(GOOD)   # a local file wins
    assert set(load_experiments()) == {"tiny"}
