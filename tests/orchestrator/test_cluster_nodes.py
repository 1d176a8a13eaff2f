"""A cluster of real `ray start` nodes on this machine, token authentication on, whose
second node sees other files (its own mount namespace, a tmpfs over the data folder): the
preflight (execute/preflight.py) refuses a node without the data before any trial, prepares
CIFAR once on a node that several trials share, and refuses a node that runs other code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from orch_helpers import REPO
from ray_nodes import RayNodes, onorm

from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.trials import expand
from trainers.data.synthetic import write_synthetic_cifar

STUB = Path(__file__).with_name("cluster_stub")
GRID = """
nodes:
  dataset: cifar10
  data_dir: {data}
  resources: {{cpu: 1, gpu: 0}}
  max_failures: -1
  settings: {{depth: 8, epochs: 2, batch_size: 64, workers: 0, device: cpu}}
  cells:
    - {{norm: batch, seeds: 4}}
"""

pytestmark = [pytest.mark.slow, pytest.mark.ray]   # a `ray start` cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """head (1 CPU, sees the data) + nodeB (2 CPUs, an empty tmpfs over the data folder,
    torchvision's download replaced by a counted stub)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) and root for a mount namespace")
    hidden = tmp_path_factory.mktemp("hidden")
    for folder in (hidden, hidden / "sub"):   # CIFAR on the head, at two paths
        write_synthetic_cifar(folder, classes=10, n_train=128, n_test=64, seed=0)
    downloads = tmp_path_factory.mktemp("counts") / "downloads.txt"
    nodes = RayNodes()
    try:
        nodes.start("head", "--num-cpus", "1", "--num-gpus", "0", head=True)
        nodes.wait_for(1)
        nodes.start("nodeB", "--num-cpus", "2", "--num-gpus", "0", hide=hidden,
                    pythonpath=STUB, env={"ONORM_TEST_DOWNLOADS": str(downloads)})
        nodes.wait_for(2)
        yield nodes, hidden, downloads
    finally:
        nodes.shutdown()


def run(nodes: RayNodes, tmp_path, data, name="run") -> tuple[int, str, list]:
    config = tmp_path / "e.yaml"
    config.write_text(GRID.format(data=data))
    code, out = onorm(["run", "nodes", "--config", str(config), "--results",
                       str(tmp_path / "results"), "--address", nodes.address],
                      nodes.env, tmp_path / f"{name}.log", cwd=tmp_path)
    # (not from the checkout: Ray puts the driver's folder on every worker's sys.path)
    return code, out, expand(load_experiments(config)["nodes"])


# about 25 s on 2 cores once the cluster is up (about 20 s)
def test_a_node_without_the_data_is_refused_before_any_trial(cluster, tmp_path):
    nodes, hidden, downloads = cluster
    code, out, _ = run(nodes, tmp_path, hidden / "sub")
    assert code == 2, out[-3000:]
    [line] = [ln for ln in out.splitlines() if ln.startswith("onorm run: error:")]
    assert "nodeB, id " in line and f"data_dir '{hidden}/sub' does not exist" in line, line
    assert "(head, id " not in line          # the head has the data: not named
    assert "Traceback" not in out
    assert not (tmp_path / "results").exists()   # nothing trained, nothing written
    assert not downloads.exists()


# about 40 s on 2 cores
def test_cifar_is_prepared_once_on_a_node_that_several_trials_share(cluster, tmp_path):
    nodes, hidden, downloads = cluster
    code, out, trials = run(nodes, tmp_path, hidden)
    assert code == 0, out[-3000:]
    assert "checking the data and code of 2 node(s) before any trial starts" in out
    rows = pd.read_parquet(tmp_path / "results" / "nodes" / "trials.parquet")
    assert set(rows.status) == {"completed"} and len(rows) == len(trials) == 4
    assert rows.node_id.nunique() == 2 and rows.node_id.value_counts().max() >= 2
    # nodeB (2 CPUs) ran at least two trials; its CIFAR was downloaded once, by the preflight
    assert len(downloads.read_text().splitlines()) == 1, downloads.read_text()
    assert downloads.read_text().split()[1] == str(hidden)
    # resubmitted: everything is done, nothing downloaded again
    code, out, _ = run(nodes, tmp_path, hidden, name="again")
    assert code == 0 and out.count(" (completed)") == 4, out[-3000:]
    assert len(downloads.read_text().splitlines()) == 1


def copy_of_the_code(folder: Path) -> Path:
    """`folder` holding a copy of this checkout's packages (what a node's PYTHONPATH may
    point at instead of the installed code)."""
    for package in ("norms", "trainers", "orchestrator"):
        shutil.copytree(REPO / package, folder / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return folder


# about 40 s on 2 cores (a third node joins, then leaves)
def test_a_node_whose_python_sees_an_edited_module_is_refused_as_other_code(
        cluster, tmp_path):
    nodes, hidden, _ = cluster
    copy = copy_of_the_code(tmp_path / "other")
    with open(copy / "trainers" / "train.py", "a") as f:
        f.write("\n# edited on this node only\n")
    nodes.start("nodeC", "--num-cpus", "1", "--num-gpus", "0", pythonpath=copy)
    try:
        nodes.wait_for(3)
        code, out, _ = run(nodes, tmp_path, hidden)
    finally:
        nodes.stop("nodeC")
    assert code == 2, out[-3000:]
    [line] = [ln for ln in out.splitlines() if ln.startswith("onorm run: error:")]
    assert "(nodeC, id " in line and " runs other code: source " in line, line
    assert "nodeB" not in line and "(head, id " not in line, line
    assert not (tmp_path / "results" / "nodes" / "trials.parquet").exists()


# about 50 s on 2 cores (a fourth node joins, then leaves)
def test_each_attempt_records_the_git_commit_of_the_node_that_ran_it(cluster, tmp_path):
    """nodeD runs the same source from another git checkout (same files, another commit):
    accepted by the preflight, and its trials record its commit, not the driver's."""
    import subprocess

    from orchestrator.execute.provenance import git_commit

    nodes, hidden, _ = cluster
    other = copy_of_the_code(tmp_path / "checkout")
    git = ["git", "-C", str(other), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "another checkout"], check=True)
    theirs = git_commit(other)
    assert theirs and theirs != git_commit(REPO)
    nodes.start("nodeD", "--num-cpus", "1", "--num-gpus", "0", pythonpath=other)
    try:
        nodes.wait_for(3)
        code, out, trials = run(nodes, tmp_path, hidden)   # 4 trials on 1 + 2 + 1 CPUs
    finally:
        nodes.stop("nodeD")
    assert code == 0, out[-3000:]
    rows = pd.read_parquet(tmp_path / "results" / "nodes" / "trials.parquet")
    assert set(rows.status) == {"completed"}
    by_node = rows.groupby("node_id").git_commit.agg(set)
    assert {theirs} in list(by_node), by_node      # nodeD's trials: nodeD's commit
    assert {git_commit(REPO)} in list(by_node), by_node   # the others: this checkout's
