"""A GPU grid joined to a cluster whose GPU nodes an autoscaler starts on demand: onorm warns
what it awaits and the grid waits, then completes on the node the autoscaler added. The
cluster is Ray's fake autoscaler for tests (the `fake_multinode` provider that
ray.cluster_utils.AutoscalingCluster drives), started here by process id under its own
RAY_TMPDIR: AutoscalingCluster itself runs `ray stop --force`, which would stop every Ray on
the machine, and its template file is not in the Ray wheel."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from orch_helpers import tiny_yaml
from ray_nodes import RayNodes, onorm

GRID = """
gpus:
  dataset: cifar10
  data_dir: {data}
  synthetic: {{n_train: 128, n_test: 64}}
  resources: {{cpu: 1, gpu: 1}}
  settings: {{depth: 8, epochs: 2, batch_size: 64, workers: 0, device: cpu}}
  cells:
    - {{norm: batch, seeds: 1}}
"""


def autoscaling_config(nodes: RayNodes) -> dict:
    """A head of 1 CPU, no GPU; GPU nodes of 1 CPU + 1 (logical) GPU, none at the start."""
    return {
        "cluster_name": "onorm-test", "max_workers": 1, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5, "head_node_type": "ray.head.default",
        "provider": {"type": "fake_multinode", "gcs_address": nodes.address,
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1, "GPU": 0}, "node_config": {},
                                 "max_workers": 0},
            "gpu_node": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {},
                         "min_workers": 0, "max_workers": 1},
        },
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


# 55 to 75 s on 2 cores
@pytest.mark.slow
@pytest.mark.ray   # a `ray start` cluster
def test_a_gpu_grid_waits_for_the_autoscaler_then_completes(tmp_path):
    nodes = RayNodes()
    try:
        config = nodes.tmpdir / "autoscaling.json"
        config.write_text(json.dumps(autoscaling_config(nodes)))
        nodes.start("head", "--num-cpus", "1", "--num-gpus", "0",
                    f"--autoscaling-config={config}", head=True,
                    env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
        nodes.wait_for(1)
        experiments = tiny_yaml(tmp_path / "e.yaml", GRID.format(data=tmp_path / "data"))
        code, out = onorm(["run", "gpus", "--config", str(experiments), "--results",
                           str(tmp_path / "results"), "--address", nodes.address],
                          nodes.env, tmp_path / "run.log", timeout=400, cwd=tmp_path)
        added = nodes.alive_nodes()
    finally:
        nodes.shutdown()
    assert code == 0, out[-3000:]
    assert ("warning: the trials ask for 1 GPU on one node, but no node has it (lower "
            "resources in experiments.yaml, or --cpu-only for GPUs); waiting for the cluster "
            "to add a node that has it") in out, out[-3000:]
    assert "no GPUs: re-run with --cpu-only" not in out
    assert added == 2   # the autoscaler added the GPU node
    rows = pd.read_parquet(tmp_path / "results" / "gpus" / "trials.parquet")
    assert list(rows.status) == ["completed"] and (rows.gpu_ids != "").all()
