"""Resume is exact: 4 epochs in one go == 2 epochs, then resume for 2 more (CPU, seeded)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from devices import DEVICES

from trainers.train import train

TIMING_COLUMNS = ["epoch_time_s", "images_per_s"]


def _run(config, model_dir, **kw):
    return train(config, model_dir=model_dir, progress=False, print_freq=0,
                 log=lambda s: None, **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", ["online", "batch"])
def test_two_plus_two_epochs_equal_four(norm, device, two_batch_cifar, tmp_path):
    # milestone 3: the lr drop happens after the resume, so the restored scheduler matters
    config = two_batch_cifar(norm=norm, epochs=4, lr_milestones=[3], device=device)
    straight, split = tmp_path / "straight", tmp_path / "split"
    _run(config, straight)
    _run(config.replace(epochs=2), split)
    first_half = pd.read_parquet(split / "metrics.parquet")
    assert first_half.epoch.tolist() == [1, 2]
    # clobber the global RNGs: resume must restore them from the checkpoint
    torch.manual_seed(12345)
    outcome = _run(config, split, resume=split / "checkpoint.pth.tar")
    assert outcome.epochs_done == 4

    a = pd.read_parquet(straight / "metrics.parquet").drop(columns=TIMING_COLUMNS)
    b = pd.read_parquet(split / "metrics.parquet").drop(columns=TIMING_COLUMNS)
    assert b.epoch.tolist() == [1, 2, 3, 4]          # no duplicated rows
    pd.testing.assert_frame_equal(a, b, check_exact=True)

    sa = torch.load(straight / "checkpoint.pth.tar", weights_only=True)
    sb = torch.load(split / "checkpoint.pth.tar", weights_only=True)
    assert sa["model"].keys() == sb["model"].keys()
    for key in sa["model"]:                           # weights and normalizer buffers
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    if norm == "online":
        buffers = [k for k in sa["model"] if k.endswith((".m", ".var", ".u", ".v"))]
        assert len(buffers) >= 4 * 9
    for pid, st in sa["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], sb["optimizer"]["state"][pid]["momentum_buffer"])
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
