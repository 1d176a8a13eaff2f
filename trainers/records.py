"""Per-epoch metric records: the Parquet column set and atomic, de-duplicating writes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from trainers.config import TrialConfig
from trainers.parquet_io import DamagedParquet, read_parquet, write_parquet_atomic

if TYPE_CHECKING:
    import pandas as pd

# The metric columns, in this order in every metrics.parquet (docs/results.md).
METRIC_COLUMNS = [
    "experiment", "trial_id", "dataset", "arch", "depth", "norm", "afwd", "abkw", "ecm",
    "seed", "epoch", "lr", "train_loss", "train_acc1", "train_acc5", "val_loss", "val_acc1",
    "val_acc5", "epoch_time_s", "images_per_s",
]
# What train() reports each epoch (the per-epoch part of METRIC_COLUMNS).
EPOCH_METRIC_KEYS = [
    "epoch", "lr", "train_loss", "train_acc1", "train_acc5", "val_loss", "val_acc1",
    "val_acc5", "epoch_time_s", "images_per_s",
]


def metric_row(config: "TrialConfig", metrics: Mapping[str, Any], experiment: str = "",
               trial_id: str = "") -> dict[str, Any]:
    """One metrics.parquet row: the trial's identifying settings plus one epoch's metrics."""
    missing = [k for k in EPOCH_METRIC_KEYS if k not in metrics]
    if missing:
        raise KeyError(f"epoch metrics lack {', '.join(missing)}")
    row: dict[str, Any] = dict(
        experiment=experiment, trial_id=trial_id, dataset=config.dataset, arch=config.arch,
        depth=int(config.depth), norm=config.norm, afwd=float(config.afwd),
        abkw=float(config.abkw), ecm=config.ecm,
        # nullable: a run without --seed is not reproducible and says so
        seed=None if config.seed is None else int(config.seed))
    row["epoch"] = int(metrics["epoch"])
    for key in EPOCH_METRIC_KEYS[1:]:
        row[key] = float(metrics[key])
    return row


def rows_frame(rows: Iterable[Mapping[str, Any]]) -> "pd.DataFrame":
    """Rows as a DataFrame with METRIC_COLUMNS order and stable dtypes (seed nullable)."""
    import pandas as pd
    df = pd.DataFrame(list(rows), columns=METRIC_COLUMNS)
    return _normalize_dtypes(df)


def _normalize_dtypes(df: "pd.DataFrame") -> "pd.DataFrame":
    if "seed" in df.columns:
        df["seed"] = df["seed"].astype("Int64")
    for col in ("depth", "epoch"):
        if col in df.columns:
            df[col] = df[col].astype("int64")
    return df


def upsert_rows(path: str | Path, rows: Sequence[Mapping[str, Any]],
                key: Sequence[str] = ("trial_id", "epoch")) -> "pd.DataFrame":
    """Merge `rows` into the Parquet file at `path`, replacing rows with the same `key`.

    Last wins (retries and resumes re-report epochs); the result is sorted by `key` and
    written atomically. Returns the merged frame. A damaged file is refused (DamagedParquet),
    never overwritten.
    """
    import pandas as pd
    path = Path(path)
    new = pd.DataFrame(list(rows))
    if path.exists():
        try:
            old = read_parquet(path, required=key)
        except DamagedParquet as err:
            raise DamagedParquet(f"{err}: move it aside (the run then writes a new one from "
                                 "this epoch on) or restore it", err.reason) from None
        merged = pd.concat([old, new], ignore_index=True) if len(new) else old
    else:
        merged = new
    if len(merged):
        merged = merged.drop_duplicates(subset=list(key), keep="last")
        merged = merged.sort_values(list(key), kind="stable").reset_index(drop=True)
    merged = _normalize_dtypes(merged)
    write_parquet_atomic(merged, path)
    return merged
