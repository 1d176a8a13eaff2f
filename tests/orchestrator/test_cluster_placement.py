"""A custom resource in `resources` keeps a multi-worker trial's coordinating Tune trial on the
nodes that have it (say, on-demand nodes beside preemptible ones): two real `ray start` nodes,
only the second started with the resource."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from orch_helpers import tiny_yaml
from ray_nodes import RayNodes, onorm

from orchestrator.execute.store import read_state
from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.trials import expand

GRID = """
pinned:
  dataset: cifar10
  data_dir: {data}
  synthetic: {{n_train: 128, n_test: 64}}
  resources: {{workers: 2, cpu: 1, gpu: 0, custom: {{on_demand: 0.5}}}}
  settings: {{depth: 8, epochs: 2, batch_size: 64, workers: 0, device: cpu}}
  cells:
    - {{norm: batch, seeds: 1}}
"""


def node_ids(nodes: RayNodes) -> dict[str, str]:
    """Node name -> node id of the alive nodes, asked from a process of their own."""
    code = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
            "print(json.dumps({n['NodeName']: n['NodeID'] for n in ray.nodes() if n['Alive']}))"
            % nodes.address)
    out = subprocess.run([sys.executable, "-c", code], env=nodes.env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# about 120 s on 2 cores (a cluster of two nodes, a Ray Train run of two workers)
@pytest.mark.slow
@pytest.mark.ray   # a `ray start` cluster
def test_the_coordinating_trial_runs_on_the_node_with_its_custom_resource(tmp_path):
    nodes = RayNodes()
    try:
        nodes.start("head", "--num-cpus", "2", "--num-gpus", "0", head=True)
        nodes.wait_for(1)
        nodes.start("ondemand", "--num-cpus", "2", "--num-gpus", "0", "--resources",
                    json.dumps({"on_demand": 1}))
        nodes.wait_for(2)
        ids = node_ids(nodes)
        config = tiny_yaml(tmp_path / "e.yaml", GRID.format(data=tmp_path / "data"))
        [trial] = expand(load_experiments(config)["pinned"])
        code, out = onorm(["run", "pinned", "--config", str(config), "--results",
                           str(tmp_path / "results"), "--address", nodes.address],
                          nodes.env, tmp_path / "run.log", cwd=tmp_path)
    finally:
        nodes.shutdown()
    assert code == 0, out[-3000:]
    assert "pinned: 1 trials: 1 completed" in out
    # the store keeps where the coordinating trial ran each attempt (execute/distributed_trial)
    state = read_state(tmp_path / "results" / "pinned" / "checkpoints" / trial.trial_id)
    assert state["context"]["node_id"] == ids["ondemand"] != ids["head"]


# about 100 s on 2 cores (two nodes of 1 CPU each; a Ray Train run of two workers)
@pytest.mark.slow
@pytest.mark.ray   # a `ray start` cluster
def test_workers_stay_on_one_node_unless_placement_spreads_them(tmp_path):
    """On two nodes of one CPU each, a trial of 2 one-CPU workers cannot be packed on one
    node: by default onorm warns and the trial waits (SIGTERM then stops it cleanly, 143);
    with `placement: spread` it runs, its ranks on both nodes."""
    import signal
    import time

    from orch_helpers import read_trials
    from ray_nodes import ONORM

    grid = GRID.replace("custom: {{on_demand: 0.5}}", "placement: {placement}").replace(
        "pinned:", "{name}:")
    nodes = RayNodes()
    try:
        nodes.start("head", "--num-cpus", "1", "--num-gpus", "0", head=True)
        nodes.wait_for(1)
        nodes.start("second", "--num-cpus", "1", "--num-gpus", "0")
        nodes.wait_for(2)
        config = tiny_yaml(tmp_path / "e.yaml", grid.format(
            name="packed", data=tmp_path / "data", placement="strict_pack") + grid.format(
            name="spread", data=tmp_path / "data", placement="spread"))
        log = tmp_path / "packed.log"
        with open(log, "w") as f:
            packed = subprocess.Popen(
                [ONORM, "run", "packed", "--config", str(config), "--results",
                 str(tmp_path / "results"), "--address", nodes.address], env=nodes.env,
                stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = time.time() + 180
            while "waiting for the cluster to add a node" not in log.read_text():
                assert packed.poll() is None and time.time() < deadline, log.read_text()
                time.sleep(0.5)
            time.sleep(5)   # it waits: nothing fails meanwhile
            assert packed.poll() is None, log.read_text()
            packed.send_signal(signal.SIGTERM)
            assert packed.wait(timeout=120) == 143, log.read_text()
        finally:
            if packed.poll() is None:
                packed.kill()
        code, out = onorm(["run", "spread", "--config", str(config), "--results",
                           str(tmp_path / "results"), "--address", nodes.address],
                          nodes.env, tmp_path / "spread.log", cwd=tmp_path)
    finally:
        nodes.shutdown()
    waited = log.read_text()
    assert ("asks for 2 workers of 1 CPU and 0 GPU each, but one node can place only 1 at once "
            "(lower resources.workers or the per-worker cpu/gpu in experiments.yaml, or set "
            "resources.placement: spread); waiting for the cluster") in waited, waited
    assert set(read_trials(tmp_path / "results" / "packed" / "trials.parquet").status) <= {
        "pending"}
    assert code == 0 and "spread: 1 trials: 1 completed" in out, out[-3000:]
