"""An experiment folder's Parquet files as reports read them: verified, and a damaged one is
one line naming the command that rebuilds it from the trial store, never a traceback.

The one reader for tables, plots, rankings, the search's record and the dry run's status
(`onorm run` itself repairs instead of refusing: execute/recorder.py).
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any, Sequence

from orchestrator import storage
from orchestrator.layout import ExperimentLayout
from trainers.errors import UserError
from trainers.parquet_io import DamagedParquet

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


def read_results(layout: ExperimentLayout, which: str, columns: Sequence[str] | None = None,
                 arrow: bool = False) -> "pd.DataFrame | pa.Table | None":
    """metrics.parquet or trials.parquet (`which`) as a DataFrame (or an Arrow table, which
    needs no pandas); None when the file does not exist; a UserError with the fix when it
    is damaged."""
    path = layout.metrics if which == "metrics" else layout.trials
    try:
        if arrow:
            return storage.read_table(path, columns)
        return storage.read_parquet(path, columns)
    except FileNotFoundError:
        return None
    except DamagedParquet as err:
        raise UserError(f"{err}: {rebuild_hint(layout)}") from None


def rebuild_hint(layout: ExperimentLayout) -> str:
    return (f"`{rebuild_command(layout)}` moves it aside and rebuilds it from the trial store "
            f"in {layout.store} (it also resumes any unfinished trial)")


def rebuild_command(layout: ExperimentLayout) -> str:
    """The command that ran this folder, from its experiment.yaml (kind, experiments file,
    --set and --only)."""
    resolved = _resolved(layout)
    command = ["onorm", "tune" if resolved.get("kind") == "tune" else "run", layout.name]
    if isinstance(resolved.get("config"), str):
        command += ["--config", resolved["config"]]
    for flag, key in (("--set", "overrides"), ("--only", "only")):   # as it was run
        values = resolved.get(key)
        command += [part for v in (values if isinstance(values, list) else [])
                    for part in (flag, str(v))]
    return shlex.join(command + ["--results", str(layout.dir.absolute().parent)])


def read_resolved(layout: ExperimentLayout) -> dict[str, Any]:
    """The folder's experiment.yaml (kind, experiments file, the planned trials), or {}."""
    return _resolved(layout)


def _resolved(layout: ExperimentLayout) -> dict[str, Any]:
    import yaml

    try:
        resolved = yaml.safe_load(storage.read_text(layout.resolved))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return resolved if isinstance(resolved, dict) else {}
