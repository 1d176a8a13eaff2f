"""Trial ids never move: every trial of today's experiments.yaml keeps its recorded id, and a
new TrialConfig field at its default leaves every id as it was."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.trial_id import make_trial_id
from orchestrator.plan.trials import expand
from orchestrator.plan.tune_kind import planned_points, point_trials
from trainers.config import TrialConfig

HERE = Path(__file__).resolve().parent
PROJECT_YAML = HERE.parents[1] / "experiments.yaml"
# trial_id -> what the trial is, for every experiment of experiments.yaml, as first recorded
GOLDEN = json.loads((HERE / "golden_trial_ids.json").read_text())


def trials_of(experiment):
    if experiment.kind == "grid":
        return expand(experiment)
    points = planned_points(experiment)
    return point_trials(experiment, points) if points is not None else []


def project_trials():
    return {name: trials_of(e) for name, e in load_experiments(PROJECT_YAML).items()}


def test_every_trial_of_the_project_experiments_keeps_its_recorded_id():
    trials = project_trials()
    assert set(trials) == set(GOLDEN)
    for name, specs in trials.items():
        assert {t.trial_id for t in specs} == set(GOLDEN[name]), name
        for t in specs:   # and each id names the same trial as when it was recorded
            c = t.config
            assert GOLDEN[name][t.trial_id] == (
                f"{c.norm} afwd={c.afwd!r} abkw={c.abkw!r} ecm={c.ecm} "
                f"groups={c.gn_num_groups} seed={c.seed}")


def test_the_dry_run_lists_the_golden_ids(capsys):
    assert main(["run", "demo", "--config", str(PROJECT_YAML), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(trial_id in out for trial_id in GOLDEN["demo"])


@dataclasses.dataclass(frozen=True)
class ConfigWithANewField(TrialConfig):
    """TrialConfig as it will be once someone adds a field (launch-only or not)."""

    some_new_knob: int = 0
    another_launch_option: bool = dataclasses.field(default=False,
                                                    metadata={"launch_only": True})


def extended(config: TrialConfig, **new) -> ConfigWithANewField:
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrialConfig)}
    return ConfigWithANewField(**values, **new)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_a_new_field_at_its_default_moves_no_id_and_off_it_makes_a_new_trial(name):
    trials = project_trials()[name]
    for t in trials:
        assert make_trial_id(extended(t.config), t.synthetic) == t.trial_id
        assert make_trial_id(extended(t.config, another_launch_option=True),
                             t.synthetic) == t.trial_id
        assert make_trial_id(extended(t.config, some_new_knob=3), t.synthetic) != t.trial_id


def test_launch_options_keep_the_id_and_recipe_options_change_it():
    [trial, *_] = project_trials()["cifar10"]
    same = trial.config.replace(workers=0, device="cpu", data_dir="/elsewhere")
    assert make_trial_id(same, trial.synthetic) == trial.trial_id
    assert make_trial_id(trial.config.replace(lr=0.05), trial.synthetic) != trial.trial_id


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_norm_impl_keeps_every_recorded_id_and_tf32_off_its_default_is_a_new_trial(name):
    # norm_impl picks the kernels that compute the same step (a launch option); tf32 is the
    # recipe's float32 GPU math, at its default ("conv", what every recorded trial ran) in
    # every golden trial.
    for t in project_trials()[name]:
        assert t.config.norm_impl == "auto" and t.config.tf32 == "conv"
        for impl in ("eager", "triton"):   # (triton needs a device that may be CUDA)
            moved = t.config.replace(norm_impl=impl, device="auto")
            assert make_trial_id(moved, t.synthetic) == t.trial_id
        assert make_trial_id(t.config.replace(tf32="none"), t.synthetic) != t.trial_id
