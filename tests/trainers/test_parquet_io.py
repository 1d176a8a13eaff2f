"""Parquet files with page checksums and a content digest: damage is an error, never a value."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from trainers.config import make_config
from trainers.errors import UserError
from trainers.parquet_io import DamagedParquet, read_parquet, read_table, write_parquet_atomic
from trainers.records import EPOCH_METRIC_KEYS, metric_row, rows_frame, upsert_rows


def metrics_frame(n: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        config = make_config("cifar10", "/d", norm=("batch", "online")[i % 2], seed=i % 3)
        values = {k: float(rng.normal()) for k in EPOCH_METRIC_KEYS}
        values["epoch"] = i // 4 + 1
        rows.append(metric_row(config, values, "exp", f"{i % 4:012x}"))
    rows[5]["val_loss"] = float("nan")
    return rows_frame(rows)


def same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return a.equals(b) and a.dtypes.to_dict() == b.dtypes.to_dict()


def test_round_trip_and_files_written_before_checksums(tmp_path):
    df = metrics_frame()
    write_parquet_atomic(df, tmp_path / "m.parquet")
    assert same(read_parquet(tmp_path / "m.parquet"), df)
    assert read_table(tmp_path / "m.parquet", columns=["trial_id"]).column_names == ["trial_id"]
    df.to_parquet(tmp_path / "old.parquet", index=False)   # no page checksums, no digest
    assert same(read_parquet(tmp_path / "old.parquet"), df)
    with pytest.raises(FileNotFoundError):
        read_parquet(tmp_path / "none.parquet")


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_a_truncated_or_empty_file_is_damaged(tmp_path, keep):
    path = tmp_path / "m.parquet"
    write_parquet_atomic(metrics_frame(), path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(DamagedParquet, match=f"{path} is damaged") as err:
        read_parquet(path)
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)


def test_random_bytes_anywhere_are_detected_or_harmless(tmp_path):
    # Without checksums, 64 random bytes read back as different values at 4 of 80 offsets.
    df = metrics_frame()
    path, damaged = tmp_path / "m.parquet", tmp_path / "d.parquet"
    write_parquet_atomic(df, path)
    data = path.read_bytes()
    rng = random.Random(0)
    detected = 0
    for _ in range(150):
        length = rng.choice((1, 8, 64))
        offset = rng.randrange(len(data) - length)
        noise = bytes(rng.randrange(256) for _ in range(length))
        damaged.write_bytes(data[:offset] + noise + data[offset + length:])
        try:
            back = read_parquet(damaged)
        except DamagedParquet:
            detected += 1
            continue
        assert same(back, df), f"{length} bytes at {offset} read back as other values"
    assert detected > 100


def test_content_that_does_not_match_its_digest_is_damaged(tmp_path):
    # pages intact (their checksums hold) but other values than the digest was taken of:
    # what damage to the footer, which no page checksum covers, can amount to
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainers.parquet_io import DIGEST_KEY, digest

    df = metrics_frame()
    other = df.copy()
    other.loc[3, "val_acc1"] += 1.0
    table = pa.Table.from_pandas(other, preserve_index=False)
    original = digest(pa.Table.from_pandas(df, preserve_index=False))
    table = table.replace_schema_metadata({**table.schema.metadata, DIGEST_KEY: original})
    pq.write_table(table, tmp_path / "m.parquet", write_page_checksum=True)
    with pytest.raises(DamagedParquet, match="does not match its checksum"):
        read_parquet(tmp_path / "m.parquet")


def test_upsert_refuses_to_overwrite_a_damaged_file(tmp_path):
    config = make_config("cifar10", "/d")
    path = tmp_path / "metrics.parquet"
    row = metric_row(config, {k: 1.0 for k in EPOCH_METRIC_KEYS})
    upsert_rows(path, [row], key=("epoch",))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DamagedParquet, match="move it aside"):
        upsert_rows(path, [row], key=("epoch",))
    assert len(path.read_bytes()) == 100
