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
