"""What has run so far for each trial (done / partial / new), read without ray or torch."""

from __future__ import annotations

from orchestrator.execute.store import read_state
from orchestrator.layout import DONE_STATUSES, ExperimentLayout
from orchestrator.plan.trials import TrialSpec
from orchestrator.report.results import read_results


def recorded_so_far(layout: ExperimentLayout, trials: list[TrialSpec],
                   done_statuses: tuple[str, ...] = DONE_STATUSES, parquet: bool = True
                   ) -> dict[str, tuple[str, int, str]]:
    """trial_id -> (done|partial|new, epochs done, recorded status) from Parquet and the
    trial store (the store alone when not `parquet`); done_statuses: those a rerun skips (a
    search also skips what its scheduler stopped). A damaged trials.parquet is a UserError
    naming the fix."""
    recorded: dict[str, dict] = {}
    # Arrow, not pandas: keeps --dry-run fast
    table = (read_results(layout, "trials", ["trial_id", "status", "epochs_done"], arrow=True)
             if parquet else None)
    if table is not None:
        recorded = {r["trial_id"]: r for r in table.to_pylist()}
    out = {}
    for trial in trials:
        row = recorded.get(trial.trial_id, {})
        state = read_state(layout.trial_store(trial.trial_id))
        status = state["outcome"] or row.get("status") or ""
        epochs = max(int(row.get("epochs_done") or 0), int(state["epoch"]))
        if status in done_statuses:
            out[trial.trial_id] = ("done", epochs, status)
        elif epochs > 0:
            out[trial.trial_id] = ("partial", epochs, status)
        else:
            out[trial.trial_id] = ("new", 0, status)
    return out
