"""The trainer's speed options: channels_last, AMP and CUDA-graph steps keep what a run means.

channels_last and cuda_graph change how fast a step runs, never what it computes (launch
options: the trial id ignores them); AMP is part of the recipe. On the CPU a graph option
trains eagerly; the CUDA cases run where a device is present.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from devices import CUDA, DEVICES

from trainers.errors import UserError
from trainers.train import train

TIMING_COLUMNS = ["epoch_time_s", "images_per_s"]


def _run(config, model_dir, **kw):
    lines = []
    outcome = train(config, model_dir=model_dir, progress=False, print_freq=0,
                    log=lines.append, **kw)
    return outcome, lines


def _metrics(model_dir):
    return pd.read_parquet(model_dir / "metrics.parquet").drop(columns=TIMING_COLUMNS)


def test_cuda_graph_on_the_cpu_trains_eagerly_with_the_same_results(tiny_cifar, tmp_path):
    config = tiny_cifar(norm="online", epochs=1)
    _run(config, tmp_path / "eager")
    _, lines = _run(config.replace(cuda_graph=True), tmp_path / "graph")
    assert any("cuda_graph needs a CUDA device; training eagerly" in line for line in lines)
    pd.testing.assert_frame_equal(_metrics(tmp_path / "eager"), _metrics(tmp_path / "graph"),
                                  check_exact=True)


def test_channels_last_runs_the_model_in_nhwc_and_trains_the_same_run(tiny_cifar, tmp_path):
    config = tiny_cifar(norm="online", epochs=1)
    _run(config, tmp_path / "nchw")
    _run(config.replace(channels_last=True), tmp_path / "nhwc")
    state = torch.load(tmp_path / "nhwc" / "checkpoint.pth.tar", weights_only=True)
    conv = state["model"]["conv1.weight"]
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    a, b = _metrics(tmp_path / "nchw"), _metrics(tmp_path / "nhwc")
    # convolutions in another layout sum in another order: equal up to float32 rounding
    pd.testing.assert_series_equal(a["train_loss"], b["train_loss"], rtol=1e-3)
    assert abs(a["val_acc1"].iloc[0] - b["val_acc1"].iloc[0]) <= 1.0


# float16 with its GradScaler, bfloat16 without one
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_amp_trains_and_resumes_exactly(amp_dtype, two_batch_cifar, tmp_path):
    config = two_batch_cifar(norm="online", epochs=2, amp=True, amp_dtype=amp_dtype)
    outcome, _ = _run(config, tmp_path / "straight")
    assert outcome.status == "completed"
    state = torch.load(tmp_path / "straight" / "checkpoint.pth.tar", weights_only=True)
    assert bool(state["scaler"]) == (amp_dtype == "float16")   # float16 scales the loss
    _run(config.replace(epochs=1), tmp_path / "split")
    _run(config, tmp_path / "split", resume=tmp_path / "split" / "checkpoint.pth.tar")
    pd.testing.assert_frame_equal(_metrics(tmp_path / "straight"), _metrics(tmp_path / "split"),
                                  check_exact=True)
    # mixed precision is another computation than float32: its loss differs
    float32 = two_batch_cifar(norm="online", epochs=2)
    _run(float32, tmp_path / "fp32")
    assert (_metrics(tmp_path / "fp32")["train_loss"]
            != _metrics(tmp_path / "straight")["train_loss"]).all()


def test_float16_amp_is_refused_with_graph_capture(tiny_cifar):
    with pytest.raises(UserError, match="cuda_graph with float16 amp"):
        tiny_cifar(amp=True, amp_dtype="float16", cuda_graph=True)
    with pytest.raises(UserError, match="amp_dtype 'float16' applies only with amp on"):
        tiny_cifar(amp_dtype="float16")


ALL_OPTIONS = dict(channels_last=True, cuda_graph=True, amp=True, amp_dtype="bfloat16")


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("norm", ["online", "batch"])
def test_exact_resume_on_cuda_with_every_option_on(norm, device, tiny_cifar, tmp_path):
    # milestone 2: the lr drops after the resume, in a newly captured graph
    config = tiny_cifar(norm=norm, epochs=3, lr_milestones=[2], device=device, **ALL_OPTIONS)
    _run(config, tmp_path / "straight")
    _run(config.replace(epochs=1), tmp_path / "split")
    torch.manual_seed(12345)
    _run(config, tmp_path / "split", resume=tmp_path / "split" / "checkpoint.pth.tar")
    pd.testing.assert_frame_equal(_metrics(tmp_path / "straight"), _metrics(tmp_path / "split"),
                                  check_exact=True)
    sa = torch.load(tmp_path / "straight" / "checkpoint.pth.tar", weights_only=True)
    sb = torch.load(tmp_path / "split" / "checkpoint.pth.tar", weights_only=True)
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("norm", ["online", "batch"])
def test_a_graphed_epoch_computes_what_an_eager_one_does(norm, device, tiny_cifar, tmp_path):
    config = tiny_cifar(norm=norm, epochs=1, device=device, channels_last=True)
    _run(config, tmp_path / "eager")
    _run(config.replace(cuda_graph=True), tmp_path / "graph")
    a, b = _metrics(tmp_path / "eager"), _metrics(tmp_path / "graph")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)


@pytest.mark.parametrize("device", [CUDA])
def test_a_graphed_training_step_never_waits_for_the_device(device, tiny_cifar):
    from torch import nn

    from trainers.metrics import EpochMeter
    from trainers.models import build_model
    from trainers.optim import build_optimizer
    from trainers.step import WARMUP_STEPS, make_train_step

    config = tiny_cifar(norm="online", device=device, **ALL_OPTIONS)
    model = build_model(config, 10, 32).to(device, memory_format=torch.channels_last)
    meter = EpochMeter(torch.device(device))
    step = make_train_step(model, nn.CrossEntropyLoss(), build_optimizer(model, config), meter,
                           torch.device(device), torch.bfloat16, None, cuda_graph=True)
    images = torch.randn(64, 3, 32, 32, device=device).contiguous(
        memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (64,), device=device)
    for _ in range(WARMUP_STEPS + 1):   # eager steps, then the capture and a first replay
        step(images, labels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step(images, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    summary = meter.summary()
    assert summary.images == 64 * (WARMUP_STEPS + 4) and not summary.nonfinite


@pytest.mark.parametrize("device", DEVICES)
def test_divergence_is_found_without_a_per_step_sync(device, tiny_cifar, tmp_path):
    config = tiny_cifar(norm="none", lr=1e12, epochs=2, device=device)
    outcome, lines = _run(config, tmp_path)
    assert outcome.status == "diverged" and outcome.epochs_done == 1
    assert any("training loss is not finite" in line for line in lines)
