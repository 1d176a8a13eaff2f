"""`onorm tune`: a small ASHA search end to end, the paper's pair in the grid, bad inputs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.cli import main
from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.tune_kind import planned_points

PROJECT_YAML = Path(__file__).resolve().parents[2] / "experiments.yaml"

TINY_TUNE = """
tiny-tune:
  kind: tune
  dataset: cifar10
  data_dir: data
  synthetic: {n_train: 128, n_test: 64}
  resources: {cpu: 1, gpu: 0}
  max_concurrent: 2
  settings: {depth: 8, epochs: 3, batch_size: 32, lr_milestones: [2], workers: 0, device: cpu}
  space:
    afwd: {dyadic: [1, 10]}
    abkw: {dyadic: [1, 8]}
  searcher: random
  num_samples: 6
  search_seed: 1
  scheduler: {type: asha, grace_period: 1, reduction_factor: 3}
"""


# about 45 s on 2 cores: -m slow (test_optuna_search_runs_its_budget... runs a search end to end
# in the default run, and the tables of stopped trials are tested from fixtures)
@pytest.mark.slow
def test_tune_with_asha_stops_some_trials_and_ranks_every_configuration(
        tmp_path, ray_session, capsys):
    config = tmp_path / "experiments.yaml"
    config.write_text(TINY_TUNE)
    results = tmp_path / "results"
    code = main(["tune", "tiny-tune", "--config", str(config), "--results", str(results)])
    assert code == 0
    exp_dir = results / "tiny-tune"
    trials = pd.read_parquet(exp_dir / "trials.parquet")
    assert len(trials) == 6
    stopped = trials[trials["status"] == "stopped"]
    assert len(stopped) >= 1, trials[["trial_id", "status", "epochs_done"]]
    assert (stopped["epochs_done"] < 3).all() and (stopped["epochs_done"] >= 1).all()
    assert set(trials["status"]) <= {"completed", "stopped"}

    ranking = pd.read_csv(exp_dir / "tables" / "ranking.csv")
    experiment = load_experiments(config)["tiny-tune"]
    expected = {(p["afwd"], p["abkw"]) for p in planned_points(experiment)}
    assert set(zip(ranking["afwd"], ranking["abkw"])) == expected
    # ranked by each configuration's best validation accuracy, best first
    metrics = pd.read_parquet(exp_dir / "metrics.parquet")
    best = metrics.groupby(["afwd", "abkw"])["val_acc1"].max()
    assert list(ranking["median_best_val_acc1"]) == sorted(best.values, reverse=True)
    assert ranking["stopped"].sum() == len(stopped)

    heatmap = exp_dir / "plots" / "tuning_heatmap.png"
    assert heatmap.read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    top = ranking.iloc[0]
    from trainers.decay import fraction_text
    assert f"afwd: {fraction_text(top['afwd'], exact=True)}" in out and "- norm: online" in out

    # re-running skips every finished configuration, including the stopped ones
    capsys.readouterr()
    assert main(["tune", "tiny-tune", "--config", str(config), "--results", str(results)]) == 0
    again = pd.read_parquet(exp_dir / "trials.parquet")
    assert list(again["attempts"]) == list(trials["attempts"])
    assert len(pd.read_parquet(exp_dir / "metrics.parquet")) == len(metrics)


def test_tune_cifar10_grid_holds_the_papers_pair_and_dry_run_lists_it(capsys):
    experiment = load_experiments(PROJECT_YAML)["tune-cifar10"]
    assert {"afwd": 1023 / 1024, "abkw": 127 / 128} in planned_points(experiment)
    assert main(["tune", "tune-cifar10", "--config", str(PROJECT_YAML), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "afwd=1023/1024 abkw=127/128" in out
    cifar100 = load_experiments(PROJECT_YAML)["tune-cifar100"]
    assert {"afwd": 511 / 512, "abkw": 15 / 16} in planned_points(cifar100)


def test_dry_run_imports_neither_torch_nor_ray():
    import subprocess

    code = ("import sys; from orchestrator.cli import main; "
            f"code = main(['tune', 'tune-demo', '--config', {str(PROJECT_YAML)!r}, '--dry-run']); "
            "assert code == 0, f'dry run exited {code}'; "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_optuna_missing_is_one_clear_line(tmp_path, monkeypatch, capsys):
    config = tmp_path / "experiments.yaml"
    config.write_text(TINY_TUNE.replace("searcher: random", "searcher: optuna"))
    monkeypatch.setitem(sys.modules, "optuna", None)   # import optuna -> ImportError
    code = main(["tune", "tiny-tune", "--config", str(config), "--results",
                 str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "pip install 'onorm[optuna]'" in err


@pytest.mark.parametrize("change, fragment", [
    (("searcher: random", "searcher: bayes"), "unknown searcher 'bayes'"),
    (("num_samples: 6", "num_samples: x"), "key 'num_samples': expected an integer"),
    (("type: asha", "type: pbt"), "unknown scheduler 'pbt'"),
    (("grace_period: 1", "grace_period: 9"), "more than the 3 epochs"),
    (("afwd: {dyadic: [1, 10]}", "afwd: {dyadic: [0, 10]}"), "integers 1 <= kmin"),
    (("device: cpu}", "device: cpu, afwd: 0.9}"), "remove it from settings"),
    (("  searcher: random\n", "  searcher: random\n  sampler: tpe\n"), "unknown key 'sampler'"),
])
def test_bad_tuning_experiments_give_one_line(tmp_path, capsys, change, fragment):
    config = tmp_path / "experiments.yaml"
    assert change[0] in TINY_TUNE
    config.write_text(TINY_TUNE.replace(*change))
    code = main(["tune", "tiny-tune", "--config", str(config), "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert fragment in err and "tiny-tune" in err


def test_grid_budget_smaller_than_grid_is_refused(tmp_path, capsys):
    config = tmp_path / "experiments.yaml"
    config.write_text(TINY_TUNE.replace("searcher: random", "searcher: grid"))
    assert main(["tune", "tiny-tune", "--config", str(config), "--dry-run"]) == 2
    assert "the dyadic grid has 80 configurations" in capsys.readouterr().err


def test_optuna_search_runs_its_budget_and_resumes_without_retraining(
        tmp_path, ray_session, capsys):
    pytest.importorskip("optuna")
    config = tmp_path / "experiments.yaml"
    config.write_text(TINY_TUNE.replace("searcher: random", "searcher: optuna")
                      .replace("num_samples: 6", "num_samples: 3")
                      .replace("afwd: {dyadic: [1, 10]}", "afwd: {loguniform: [0.0005, 0.1]}")
                      .replace("epochs: 3", "epochs: 2")
                      .replace("grace_period: 1", "grace_period: 2"))
    results = tmp_path / "results"
    args = ["tune", "tiny-tune", "--config", str(config), "--results", str(results)]
    assert main(args) == 0
    trials = pd.read_parquet(results / "tiny-tune" / "trials.parquet")
    assert len(trials) == 3 and set(trials["status"]) == {"completed"}
    assert all(0.0005 <= 1 - a <= 0.1 for a in trials["afwd"])
    ranking = pd.read_csv(results / "tiny-tune" / "tables" / "ranking.csv")
    assert len(ranking) == 3
    assert main(args) == 0   # budget spent: nothing new runs, nothing is retrained
    again = pd.read_parquet(results / "tiny-tune" / "trials.parquet")
    assert len(again) == 3 and list(again["attempts"]) == list(trials["attempts"])


def test_optuna_resume_takes_diverged_and_out_of_space_configurations_in_stride(
        tmp_path, monkeypatch):
    # Recorded configurations Optuna cannot take as they are: one whose every seed diverged
    # (its score is NaN) and two its current dyadic axis cannot hold. They count against the
    # budget, the NaN one is a failed trial to Optuna, and the search asks only for the rest.
    pytest.importorskip("optuna")
    from orchestrator.execute import search as tune_search
    from orchestrator.execute.runner import RunSummary
    from trainers.decay import dyadic

    config = tmp_path / "experiments.yaml"
    config.write_text(TINY_TUNE.replace("searcher: random", "searcher: optuna")
                      .replace("num_samples: 6", "num_samples: 4"))
    experiment = load_experiments(config)["tiny-tune"]
    diverged = {"afwd": dyadic(3), "abkw": dyadic(2)}
    finished = [diverged, {"afwd": dyadic(12), "abkw": dyadic(2)},   # k 12 > today's kmax 10
                {"afwd": 0.9, "abkw": dyadic(2)}]                    # not 1 - 2^-k at all
    monkeypatch.setattr(tune_search, "recorded_points", lambda *args: (finished, []))
    monkeypatch.setattr(tune_search, "config_scores",
                        lambda *args: {(diverged["afwd"], diverged["abkw"]): float("nan")})
    batches = []

    def run_points(experiment, points, results_dir, options):
        batches.append(points)
        return RunSummary(experiment.name, {"completed": len(points)}, {})
    monkeypatch.setattr(tune_search, "run_points", run_points)

    tune_search.run_optuna(experiment, tmp_path / "results", {"max_concurrent": 2})
    assert len(batches) == 1 and len(batches[0]) == 1   # 4 - 3 recorded = 1 new configuration
    k_afwd = -math.log2(1 - batches[0][0]["afwd"])
    assert k_afwd == round(k_afwd) and 1 <= k_afwd <= 10


def test_dry_run_shows_a_trial_the_scheduler_stopped_as_done_for_a_search(tmp_path):
    from orchestrator.cli.recorded_so_far import recorded_so_far
    from orchestrator.layout import SEARCH_DONE_STATUSES, ExperimentLayout
    from orchestrator.plan.tune_kind import point_trials

    config = tmp_path / "experiments.yaml"
    config.write_text(TINY_TUNE)
    experiment = load_experiments(config)["tiny-tune"]
    [trial] = point_trials(experiment, [{"afwd": 0.5, "abkw": 0.75}])
    layout = ExperimentLayout.of(tmp_path, "tiny-tune")
    trials_path = layout.trials
    trials_path.parent.mkdir(parents=True)
    pd.DataFrame({"trial_id": [trial.trial_id], "status": ["stopped"],
                  "epochs_done": [1]}).to_parquet(trials_path)
    # `onorm tune` does not rerun it; `onorm run` would, so there it is partial
    assert recorded_so_far(layout, [trial], SEARCH_DONE_STATUSES) == {
        trial.trial_id: ("done", 1, "stopped")}
    assert recorded_so_far(layout, [trial]) == {
        trial.trial_id: ("partial", 1, "stopped")}


def test_each_command_names_the_other_for_an_experiment_of_its_kind(tmp_path, capsys):
    config = tmp_path / "experiments.yaml"
    config.write_text(TINY_TUNE + """
tiny-grid:
  dataset: cifar10
  data_dir: data
  synthetic: {n_train: 128, n_test: 64}
  settings: {depth: 8, epochs: 1, workers: 0, device: cpu}
  cells:
    - {norm: batch, seeds: 1}
""")
    assert main(["run", "tiny-tune", "--config", str(config), "--dry-run"]) == 2
    assert "run it with `onorm tune tiny-tune`" in capsys.readouterr().err
    assert main(["tune", "tiny-grid", "--config", str(config), "--dry-run"]) == 2
    assert "run it with `onorm run tiny-grid`" in capsys.readouterr().err
    with pytest.raises(SystemExit):   # argparse: a usage line and exit 2
        main(["run", "tiny-grid", "--config", str(config), "--max-concurrent", "0"])
    assert "expected a positive integer, got 0" in capsys.readouterr().err


def test_scheduler_has_one_default_none_and_a_block_must_say_its_type(tmp_path, capsys):
    config = tmp_path / "experiments.yaml"
    without = TINY_TUNE.replace("  scheduler: {type: asha, grace_period: 1, reduction_factor: 3}\n",
                                "")
    config.write_text(without)
    assert load_experiments(config)["tiny-tune"].extra["scheduler"]["type"] == "none"
    config.write_text(TINY_TUNE.replace("type: asha, ", ""))
    assert main(["tune", "tiny-tune", "--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "key 'scheduler.type': missing" in err


def _recorded_search(tmp_path, experiment, old_experiment, old_acc: float, new_acc: float):
    """trials.parquet and metrics.parquet holding one configuration run under the search's
    current settings and the same (afwd, abkw) run under earlier settings."""
    from orchestrator.layout import ExperimentLayout
    from orchestrator.plan.tune_kind import point_trials
    from trainers.records import metric_row, rows_frame

    point = {"afwd": 0.5, "abkw": 0.75}
    [new] = point_trials(experiment, [point])
    [old] = point_trials(old_experiment, [point])
    assert new.trial_id != old.trial_id
    layout = ExperimentLayout.of(tmp_path / "results", experiment.name)
    layout.dir.mkdir(parents=True)
    rows = []
    for spec, acc in ((old, old_acc), (new, new_acc)):
        rows.append(metric_row(spec.config, {
            "epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc1": acc, "train_acc5": acc,
            "val_loss": 1.0, "val_acc1": acc, "val_acc5": acc, "epoch_time_s": 1.0,
            "images_per_s": 1.0}, experiment.name, spec.trial_id))
    rows_frame(rows).to_parquet(layout.metrics)
    pd.DataFrame({"trial_id": [old.trial_id, new.trial_id], "afwd": [0.5, 0.5],
                  "abkw": [0.75, 0.75], "status": ["completed", "running"],
                  "config_json": [json.dumps(s.recorded_config()) for s in (old, new)]}
                 ).to_parquet(layout.trials)
    return point, layout


def test_a_search_never_pools_runs_of_its_earlier_settings(tmp_path):
    from orchestrator.execute import search
    from orchestrator.report.tuning_report import write_tuning_report

    config = tmp_path / "experiments.yaml"
    config.write_text(TINY_TUNE)
    experiment = load_experiments(config)["tiny-tune"]
    config.write_text(TINY_TUNE.replace("epochs: 3", "epochs: 2"))   # how it was before
    old_experiment = load_experiments(config)["tiny-tune"]
    point, layout = _recorded_search(tmp_path, experiment, old_experiment, 90.0, 40.0)

    # Optuna hears only the current setting's score; the old setting's finished run is not
    # taken as this search's finished configuration (its current run is still going)
    assert search.config_scores(tmp_path / "results", experiment) == {(0.5, 0.75): 40.0}
    assert search.recorded_points(tmp_path / "results", experiment) == ([], [point])
    out = write_tuning_report(experiment.name, layout.dir, search.search_setting(experiment))
    ranking = pd.read_csv(out["ranking_csv"])
    assert list(ranking["median_best_val_acc1"]) == [40.0] and list(ranking["runs"]) == [1]


def test_optuna_runs_num_samples_distinct_configurations_even_when_it_repeats_itself(
        tmp_path, monkeypatch, capsys):
    # A space of three points, one configuration per batch: TPE's random start proposes
    # points twice, which must neither count against the budget nor run again.
    pytest.importorskip("optuna")
    from orchestrator.execute import search
    from orchestrator.execute.runner import RunSummary

    config = tmp_path / "experiments.yaml"
    config.write_text(TINY_TUNE.replace("searcher: random", "searcher: optuna")
                      .replace("afwd: {dyadic: [1, 10]}", "afwd: {dyadic: [1, 1]}")
                      .replace("abkw: {dyadic: [1, 8]}", "abkw: {dyadic: [1, 3]}")
                      .replace("num_samples: 6", "num_samples: 3")
                      .replace("search_seed: 1", "search_seed: 0"))   # proposes 2, 3, 2, ...
    experiment = load_experiments(config)["tiny-tune"]
    ran: list[tuple[float, float]] = []
    monkeypatch.setattr(search, "recorded_points", lambda *args: ([], []))
    monkeypatch.setattr(search, "config_scores",
                        lambda *args: {p: 50.0 + 10 * p[1] for p in ran})

    def run_points(experiment, points, results_root, options):
        ran.extend((p["afwd"], p["abkw"]) for p in points)
        return RunSummary(experiment.name, {"completed": len(points)}, None)
    monkeypatch.setattr(search, "run_points", run_points)

    search.run_optuna(experiment, tmp_path / "results", {"max_concurrent": 1})
    assert sorted(ran) == sorted(set(ran)) and len(ran) == 3
    # a budget larger than the space ends when the space is exhausted, and says so
    experiment.extra["num_samples"] = 5
    ran.clear()
    search.run_optuna(experiment, tmp_path / "results", {"max_concurrent": 2})
    assert len(ran) == 3 == len(set(ran))
    assert "the space holds no more" in capsys.readouterr().out
