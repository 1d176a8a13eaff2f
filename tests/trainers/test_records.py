"""Metric rows and atomic, de-duplicating Parquet writes."""

from __future__ import annotations

import math
import os

import pandas as pd
import pyarrow.parquet
import pytest

from trainers.config import make_config
from trainers.records import (
    EPOCH_METRIC_KEYS,
    METRIC_COLUMNS,
    metric_row,
    rows_frame,
    upsert_rows,
    write_parquet_atomic,
)


def _metrics(epoch: int, acc: float = 50.0) -> dict:
    m = {k: 1.5 for k in EPOCH_METRIC_KEYS}
    m.update(epoch=epoch, val_acc1=acc)
    return m


def test_metric_row_has_the_design_columns_in_order():
    config = make_config("cifar100", "/d", norm="online", seed=3)
    row = metric_row(config, _metrics(2), experiment="cifar100", trial_id="abc")
    assert list(row) == METRIC_COLUMNS
    assert row["afwd"] == 511 / 512 and row["abkw"] == 15 / 16 and row["norm"] == "online"
    assert row["seed"] == 3 and row["epoch"] == 2 and row["trial_id"] == "abc"
    assert metric_row(config.replace(seed=None), _metrics(1))["seed"] is None


def test_metric_row_rejects_missing_keys():
    config = make_config("cifar10", "/d")
    metrics = _metrics(1)
    del metrics["val_acc5"]
    with pytest.raises(KeyError, match="val_acc5"):
        metric_row(config, metrics)


def test_upsert_replaces_same_key_last_wins(tmp_path):
    config = make_config("cifar10", "/d", seed=0)
    path = tmp_path / "metrics.parquet"
    upsert_rows(path, [metric_row(config, _metrics(e), trial_id="t1") for e in (1, 2)])
    upsert_rows(path, [metric_row(config, _metrics(1), trial_id="t2")])
    upsert_rows(path, [metric_row(config, _metrics(2, acc=77.0), trial_id="t1"),
                       metric_row(config, _metrics(3), trial_id="t1")])
    df = pd.read_parquet(path)
    assert list(df.columns) == METRIC_COLUMNS
    assert list(zip(df.trial_id, df.epoch)) == [("t1", 1), ("t1", 2), ("t1", 3), ("t2", 1)]
    assert df.loc[(df.trial_id == "t1") & (df.epoch == 2), "val_acc1"].item() == 77.0
    assert str(df["seed"].dtype) == "Int64"


def test_nan_values_survive_the_round_trip(tmp_path):
    config = make_config("cifar10", "/d")
    metrics = _metrics(1)
    metrics["val_loss"] = math.nan
    path = tmp_path / "m.parquet"
    write_parquet_atomic(rows_frame([metric_row(config, metrics)]), path)
    df = pd.read_parquet(path)
    assert math.isnan(df.val_loss[0]) and df.seed.isna()[0]


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "m.parquet"
    write_parquet_atomic(pd.DataFrame({"a": [1, 2]}), path)
    assert path.stat().st_mode & 0o777 == 0o644   # readable by others, unlike mkstemp's 0600

    def boom(table, where, **k):   # the writer goes through pyarrow (page checksums)
        with open(where, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(pyarrow.parquet, "write_table", boom)
    with pytest.raises(OSError):
        write_parquet_atomic(pd.DataFrame({"a": [3]}), path)
    monkeypatch.undo()
    assert pd.read_parquet(path).a.tolist() == [1, 2]
    assert os.listdir(tmp_path) == ["m.parquet"]  # no temporary left behind
