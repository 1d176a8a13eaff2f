"""Where a trial's parts go (execute/placement.py): K workers on one node unless asked,
custom resources that keep the coordinating trial on chosen nodes, and what no node has:
refused when Ray runs here, awaited (with a warning) on a joined cluster."""

from __future__ import annotations

import re

import pytest
from orch_helpers import GOOD, tiny_trial

from orchestrator.execute.placement import COORDINATOR, shortfalls, trial_bundle, worker_strategy
from orchestrator.plan.experiments import load_experiments
from orchestrator.plan.trials import expand
from trainers.errors import UserError


def test_placement_and_custom_resources_are_checked_and_leave_trial_ids_alone(tmp_path):
    config = tmp_path / "e.yaml"
    config.write_text(GOOD)
    plain = expand(load_experiments(config)["tiny"])
    config.write_text(GOOD.replace("resources: {cpu: 1, gpu: 0}", "resources: {cpu: 1, gpu: 0, "
                                   "placement: spread, custom: {on_demand: 0.01}}"))
    placed = expand(load_experiments(config)["tiny"])
    assert [t.trial_id for t in placed] == [t.trial_id for t in plain]   # launch-only
    assert placed[0].resources["placement"] == "spread"
    assert placed[0].resources["custom"] == {"on_demand": 0.01}
    assert "placement" not in plain[0].resources   # the default is not written out
    for text, message in (
            ("placement: anywhere", "key 'resources.placement': expected one of strict_pack, "
                                    "pack, spread (strict_pack: every worker on one node), "
                                    "got 'anywhere'"),
            ("custom: {GPU: 1}", "key 'resources.custom': 'GPU' is not a custom resource name"),
            ("custom: {spot: 0}", "key 'resources.custom.spot': must be > 0, got 0")):
        config.write_text(GOOD.replace("resources: {cpu: 1, gpu: 0}",
                                       f"resources: {{cpu: 1, gpu: 0, {text}}}"))
        with pytest.raises(UserError, match=re.escape("experiment 'tiny', " + message)):
            load_experiments(config)["tiny"]


def test_bundles_strategy_and_what_no_node_has(tmp_path):
    k4 = {"cpu": 2.0, "gpu": 1.0, "workers": 4, "custom": {"on_demand": 0.01}}
    assert trial_bundle(k4) == {**COORDINATOR, "on_demand": 0.01}   # the coordinator only
    assert worker_strategy(k4) == "STRICT_PACK"                      # ranks on one node
    assert worker_strategy({**k4, "placement": "spread"}) == "SPREAD"
    assert trial_bundle({"cpu": 1.0, "gpu": 0.5, "workers": 1}) == {"CPU": 1.0, "GPU": 0.5}

    two_gpu_nodes = [{"CPU": 8.0, "GPU": 2.0, "on_demand": 1.0}, {"CPU": 8.0, "GPU": 2.0}]
    trial = tiny_trial(tmp_path / "data", resources=k4)
    [problem] = shortfalls([trial], two_gpu_nodes)   # 4 GPUs in all, 2 per node
    assert (f"trial {trial.trial_id} asks for 4 workers of 2 CPU and 1 GPU each, but one node "
            "can place only 2 at once") in problem and "placement: spread" in problem
    spread = tiny_trial(tmp_path / "data", resources={**k4, "placement": "spread"})
    assert shortfalls([spread], two_gpu_nodes) == []
    # no node has the custom resource yet, or a GPU at all: named
    pinned = tiny_trial(tmp_path / "data", resources={"cpu": 1.0, "gpu": 1.0, "workers": 1,
                                                      "custom": {"spot_free": 1.0}})
    [problem] = shortfalls([pinned], [{"CPU": 4.0}])
    assert problem.startswith("the trials ask for 1 GPU, 1 spot_free on one node, but no node "
                              "has it"), problem


def test_ray_train_takes_the_strategy_and_tune_the_custom_bundle():
    """The values handed to Ray are ones Ray accepts (its own checks, no cluster needed)."""
    import ray.train
    from ray import tune

    for placement in ("strict_pack", "pack", "spread"):
        scaling = ray.train.ScalingConfig(
            num_workers=2, resources_per_worker={"CPU": 1},
            placement_strategy=worker_strategy({"placement": placement}))
        assert scaling.placement_strategy == placement.upper()
    factory = tune.PlacementGroupFactory([trial_bundle(
        {"cpu": 1.0, "gpu": 0.0, "workers": 2, "custom": {"on_demand": 0.01}})])
    assert factory.required_resources == {**COORDINATOR, "on_demand": 0.01}
