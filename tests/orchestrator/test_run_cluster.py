"""On a simulated two-node cluster, trials with fractional GPUs spread over nodes and share GPUs."""

from __future__ import annotations

import pandas as pd
import pytest
from orch_helpers import tiny_trial

from orchestrator.execute.live import LiveView
from orchestrator.execute.runner import run_trials
from trainers.errors import UserError


@pytest.fixture
def two_node_cluster(ray_exclusive):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 2, "num_gpus": 1})
    cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


# about 35 s on 2 cores (a simulated two-node cluster of its own)
@pytest.mark.slow
def test_fractional_gpu_trials_share_gpus_across_two_nodes(two_node_cluster, tmp_path):
    half = {"cpu": 0.5, "gpu": 0.5}
    trials = [tiny_trial(tmp_path / "data", norm, seed=seed, epochs=2, resources=half)
              for norm, seed in (("batch", 0), ("batch", 1), ("group", 0), ("instance", 0))]
    summary = run_trials("cluster", trials, tmp_path / "results",
                         address=two_node_cluster.address, live=LiveView("cluster", tty=False))
    assert summary.counts == {"completed": 4}
    rows = pd.read_parquet(summary.layout.trials)
    assert rows.node_id.nunique() == 2            # placed on both nodes
    assert (rows.gpu_ids != "").all()             # every trial was given a (logical) GPU
    shared = False
    for _, group in rows.groupby("node_id"):
        assert group.gpu_ids.nunique() == 1       # one GPU per node: every trial there used it
        runs = group.to_dict("records")
        # two of them ran at the same time: each started before the other finished
        shared |= any(a["started_at"] < b["updated_at"] and b["started_at"] < a["updated_at"]
                      for i, a in enumerate(runs) for b in runs[i + 1:])
    assert shared
    metrics = pd.read_parquet(summary.layout.metrics)   # all records reached the driver
    assert sorted(zip(metrics.trial_id, metrics.epoch)) == sorted(
        (t.trial_id, e) for t in trials for e in (1, 2))


def test_gpu_grid_on_a_cluster_without_gpus_is_refused_before_submission(ray_exclusive,
                                                                         tmp_path):
    import ray

    ray.init(address="local", num_cpus=1, num_gpus=0, include_dashboard=False)
    trial = tiny_trial(tmp_path / "data", resources={"cpu": 1, "gpu": 0.25})
    with pytest.raises(UserError, match="no GPUs: re-run with --cpu-only"):
        run_trials("nogpu", [trial], tmp_path / "results", live=LiveView("nogpu", tty=False))
    assert not (tmp_path / "results" / "nogpu" / "metrics.parquet").exists()
    # refused before anything started, and it leaves nothing behind (issue 13: this test
    # used to find the trial recorded as pending with 0 attempts in trials.parquet)
    assert not (tmp_path / "results").exists()
