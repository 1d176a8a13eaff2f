"""How a driver gets onto a cluster (cli/cluster.py), checked before Ray starts: Ray Client
and dashboard addresses are refused with the `ray job submit` line to use instead, results or
data inside a Ray job's temporary working folder are refused, and `max_failures: -1` (no
limit) is accepted."""

from __future__ import annotations

import json

import pytest
from orch_helpers import GOOD

from orchestrator.cli import main
from orchestrator.cli.cluster import JOB_CONFIG_ENV
from orchestrator.plan.experiments import load_experiments


@pytest.mark.parametrize("address, source, expected", [
    ("ray://head.example:10001", "--address",
     "--address ray://head.example:10001 is a Ray Client address, which cannot run a Tune "
     "driver"),
    ("http://head.example:8265", "RAY_ADDRESS",
     "RAY_ADDRESS http://head.example:8265 is a Ray dashboard address, where jobs are "
     "submitted, not a cluster to join"),
], ids=["ray_client", "dashboard_from_env"])
def test_client_and_dashboard_addresses_are_refused_with_the_job_command(
        address, source, expected, tmp_path, capsys, monkeypatch, no_ray):
    config = tmp_path / "e.yaml"
    config.write_text(GOOD)
    argv = ["run", "tiny", "--config", str(config), "--results", str(tmp_path / "r")]
    if source == "--address":
        argv += ["--address", address]
    else:
        monkeypatch.setenv("RAY_ADDRESS", address)
    before = set(tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    # the dashboard of the same host, on the port the address named or Ray's default
    assert "ray job submit --address http://head.example:8265 -- onorm run tiny" in err, err
    assert set(tmp_path.rglob("*")) == before   # nothing written (no synthetic data either)


def in_a_ray_job(monkeypatch, folder):
    """The environment of a Ray job's entrypoint submitted with --working-dir: Ray runs it
    in its temporary copy of the folder and describes the job in JOB_CONFIG_ENV."""
    monkeypatch.chdir(folder)
    monkeypatch.setenv(JOB_CONFIG_ENV, json.dumps(
        {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {}}))


def test_results_or_data_inside_a_jobs_working_folder_copy_are_refused(
        tmp_path, capsys, monkeypatch, no_ray):
    copy, elsewhere = tmp_path / "job_copy", tmp_path / "kept"
    copy.mkdir()
    (copy / "e.yaml").write_text(GOOD.replace("data_dir: data", f"data_dir: {elsewhere}/data"))
    in_a_ray_job(monkeypatch, copy)
    before = set(tmp_path.rglob("*"))
    assert main(["run", "tiny", "--config", "e.yaml"]) == 2   # --results defaults to results
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert (f"--results '{copy}/results' is inside this Ray job's temporary copy of its "
            f"--working-dir ({copy}), which Ray deletes when the job ends: give an absolute "
            "path on the node (or a URI such as s3://bucket/results)") in err, err

    # the yaml's relative data_dir resolves next to the yaml, here inside the copy
    (copy / "e.yaml").write_text(GOOD)
    assert main(["run", "tiny", "--config", "e.yaml", "--results", str(elsewhere)]) == 2
    err = capsys.readouterr().err
    assert f"data_dir '{copy}/data/synthetic-128-64' is inside this Ray job's" in err, err
    assert set(tmp_path.rglob("*")) == before

    # outside a job (or with absolute folders) the same paths are fine: the dry run lists it
    monkeypatch.delenv(JOB_CONFIG_ENV)
    assert main(["run", "tiny", "--config", "e.yaml", "--dry-run"]) == 0


def test_max_failures_minus_one_means_no_limit_and_below_is_refused(tmp_path, capsys):
    config = tmp_path / "e.yaml"
    config.write_text(GOOD + "  max_failures: -1\n")
    assert load_experiments(config)["tiny"].max_failures == -1
    from ray import tune

    assert tune.FailureConfig(max_failures=-1).max_failures == -1   # Tune's "retry forever"
    config.write_text(GOOD + "  max_failures: -2\n")
    assert main(["run", "tiny", "--config", str(config), "--dry-run"]) == 2
    assert ("experiment 'tiny', key 'max_failures': expected an integer in [-1, 1000], got -2"
            in capsys.readouterr().err)
