"""Checkpoint helpers: RNG capture round trip, weights_only loading, atomic files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from trainers.checkpoint import (
    BEST_NAME,
    CHECKPOINT_NAME,
    check_compatible,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trainers.errors import UserError


def _draws():
    return (torch.rand(3).tolist(), random.random(), random.gauss(0, 1),
            np.random.rand(2).tolist(), np.random.randn())


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    random.gauss(0, 1)       # leaves a cached gaussian in python's state
    np.random.randn()
    state = {"model": {}, "optimizer": {}, "scheduler": {}, "epoch": 1, "config": {},
             "rng": rng_state()}
    path = save_checkpoint(state, tmp_path, is_best=False)
    expected = _draws()
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    loaded = torch.load(path, weights_only=True)
    set_rng_state(loaded["rng"])
    assert _draws() == expected


def test_save_is_atomic_and_best_is_a_copy(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "optimizer": {}, "scheduler": {}, "epoch": 3,
             "config": {}, "rng": rng_state()}
    save_checkpoint(state, tmp_path, is_best=True)
    state["epoch"] = 4
    save_checkpoint(state, tmp_path, is_best=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([BEST_NAME, CHECKPOINT_NAME])
    assert load_checkpoint(tmp_path)["epoch"] == 4
    assert load_checkpoint(tmp_path / BEST_NAME)["epoch"] == 3
    # a save that dies half-way leaves the previous checkpoint whole and no temporary file
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise OSError("disk full")
    torch.save = dies_half_way
    try:
        state["epoch"] = 5
        with pytest.raises(OSError, match="disk full"):
            save_checkpoint(state, tmp_path, is_best=True)
    finally:
        torch.save = real_save
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([BEST_NAME, CHECKPOINT_NAME])
    assert load_checkpoint(tmp_path)["epoch"] == 4
    assert (tmp_path / CHECKPOINT_NAME).stat().st_mode & 0o777 == 0o644


def test_foreign_or_truncated_files_are_user_errors(tmp_path):
    path = tmp_path / "x.pth.tar"
    torch.save({"state_dict": {}}, path)     # e.g. a bare model file
    with pytest.raises(UserError, match="not an onorm training checkpoint"):
        load_checkpoint(path)
    good = tmp_path / "good.pth.tar"
    torch.save({"model": {}, "optimizer": {}, "scheduler": {}, "epoch": 1, "config": {},
                "rng": rng_state()}, good)
    path.write_bytes(good.read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(path)


def test_compatibility_names_the_differing_setting():
    saved = {"config": {"dataset": "cifar10", "arch": "resnet", "depth": 20, "norm": "online",
                        "gn_num_groups": 8, "epochs": 10}}
    now = dict(saved["config"], epochs=250)       # more epochs: fine
    check_compatible(saved, now, "ck")
    with pytest.raises(UserError, match="depth=20 \\(now 32\\)"):
        check_compatible(saved, dict(now, depth=32), "ck")
