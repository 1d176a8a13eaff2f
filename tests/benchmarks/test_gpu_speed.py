"""benchmarks/gpu_speed.py runs every section end to end on the CPU with --tiny shapes, so
that a Python error in it shows here and not in a lent GPU's few minutes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import gpu_speed

REPO = Path(__file__).resolve().parents[2]


def test_every_section_runs_on_the_cpu_with_tiny_shapes(capsys):
    assert gpu_speed.main(["--device", "cpu", "--tiny"]) == 0
    out = capsys.readouterr().out
    summaries = [line for line in out.splitlines() if line.startswith("summary: ")]
    # one line per section, one per ResNet-20 mode: what cuda_checks.sh collects
    assert any(line.startswith("summary: layer time over batch norm's") for line in summaries)
    for mode, _ in gpu_speed.MODES:
        assert any(line.startswith(f"summary: resnet20 {mode}: online step") for line in summaries)
    assert any(line.startswith("summary: resnet50 batch 2: online step") for line in summaries)
    assert any(line.startswith("summary: packing 1 trials per GPU") for line in summaries)
    [projection] = [line for line in summaries if "projection GPU-hours" in line]
    hours = dict(part.split() for part in projection.split(": ", 2)[2].split(", "))
    assert set(hours) == {"cifar10", "cifar100", "imagenet"}
    assert all(float(v) > 0 for v in hours.values())
    # the projection prices the grids' own configuration: seeded
    assert f"(mode {gpu_speed.GRID_MODE})" in out
    # the seeded mode restored the global flags it set
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory


def test_the_seeded_mode_trains_as_a_seeded_trial():
    from orchestrator.plan.experiments import load_experiments
    from orchestrator.plan.trials import expand

    config = gpu_speed.cifar_config("online", "cpu", **dict(gpu_speed.MODES)[gpu_speed.GRID_MODE])
    # the mode the GPU-hours projection prices is how the paper's grids run their trials
    grid = expand(load_experiments(REPO / "experiments.yaml")["cifar10"])[0].config
    for option in ("channels_last", "cuda_graph", "amp", "batch_size", "depth"):
        assert getattr(config, option) == getattr(grid, option), option
    assert config.seed is not None and grid.seed is not None   # both seeded
    with gpu_speed.seeded(config):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory


@pytest.mark.parametrize("argv,message", [
    (["--modes", "a,x"], "--modes: unknown mode(s) x"),
    (["--sections", "layers,speed"], "--sections: unknown section(s) speed"),
])
def test_bad_options_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        gpu_speed.main(["--device", "cpu", *argv])
    assert err.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("index", [0, 2])
def test_triton_warm_up_workloads_run(index, monkeypatch):
    # cuda_checks.sh runs them on the GPU to fill Triton's cache; here eagerly on the CPU,
    # so that a Python error in one cannot cost device minutes (on 2 images, not 128: the
    # batch size matters to the kernels compiled, not to the Python that runs them).
    from benchmarks import warm_triton
    monkeypatch.setattr(warm_triton, "DEVICE", "cpu")
    monkeypatch.setattr(warm_triton, "IMPL", "eager")
    monkeypatch.setattr(warm_triton, "CIFAR_BATCH", 2)
    name, run = warm_triton.WORKLOADS[index]
    assert name.startswith("resnet20")
    run()
