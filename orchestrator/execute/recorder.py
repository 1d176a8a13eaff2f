"""The driver's record of a run: metrics.parquet and trials.parquet, updated as events arrive.

Only the driver writes these files, each time atomically (readers see the old file or the new
one). metrics.parquet has one row per (trial_id, epoch), last wins when a retry re-reports an
epoch; trials.parquet has one row per trial with its status and provenance. At start the
record is reconciled with the checkpoint store, which is written before Tune hears of an
epoch: epochs and outcomes the driver missed because it was killed are filled in from there.
Plain Python (no ray): the Tune callback in runner.py only forwards events here.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable

from orchestrator.execute.store import CheckpointStore
from orchestrator.layout import DONE_STATUSES, ExperimentLayout
from orchestrator.plan.trials import TrialSpec

TRIAL_COLUMNS = [
    "experiment", "trial_id", "dataset", "arch", "depth", "norm", "afwd", "abkw", "ecm",
    "seed", "status", "epochs", "epochs_done", "best_epoch", "best_val_acc1", "config_json",
    "attempts", "error", "git_commit", "package_versions", "first_git_commit", "host",
    "device", "node_id", "gpu_ids", "start_epoch", "started_at", "updated_at",
]
# Reported by the trainable beside the epoch metrics; copied into the trial's row.
# start_epoch/started_at describe the latest attempt (start_epoch > 1: it resumed).
CONTEXT_KEYS = ("host", "device", "node_id", "gpu_ids")
ATTEMPT_KEYS = ("start_epoch", "started_at")


class Recorder:
    """Holds the run's rows in memory and rewrites the Parquet files after each event."""

    def __init__(self, layout: ExperimentLayout, trials: list[TrialSpec],
                 provenance: dict[str, str], skip_statuses: tuple[str, ...] = DONE_STATUSES,
                 on_change: Callable[["Recorder", str], None] | None = None):
        import pandas as pd

        self.experiment = layout.name
        self.layout = layout
        self.store = CheckpointStore(layout.store)
        self.specs = {t.trial_id: t for t in trials}
        self.provenance = provenance
        self.skip_statuses = skip_statuses
        self.on_change = on_change or (lambda recorder, message: None)
        self.metrics: dict[tuple[str, int], dict[str, Any]] = {}
        self.rows: dict[str, dict[str, Any]] = {}
        if layout.metrics.exists():
            for row in pd.read_parquet(layout.metrics).to_dict("records"):
                self.metrics[(row["trial_id"], int(row["epoch"]))] = row
        if layout.trials.exists():
            for row in pd.read_parquet(layout.trials).to_dict("records"):
                self.rows[row["trial_id"]] = row
        self.reconcile()

    # ------------------------------------------------------------ state
    def reconcile(self) -> None:
        """Fill in what the store knows and the Parquet files missed; mark the rest pending."""
        for trial_id, spec in self.specs.items():
            state = self.store.state(trial_id)
            for metrics in state["history"]:
                key = (trial_id, int(metrics["epoch"]))
                if key not in self.metrics:
                    self.metrics[key] = self._metric_row(spec, metrics)
            # defaults first: rows written by an older version may lack newer columns
            row = {**self._new_row(spec), **self.rows.get(trial_id, {})}
            row["attempts"] = max(int(row.get("attempts") or 0), state["attempts"])
            if state["outcome"] in DONE_STATUSES:
                row["status"] = state["outcome"]
            elif row.get("status") not in self.skip_statuses:
                row["status"] = "pending"
            self.rows[trial_id] = row
            self._update_progress(trial_id)
        self.write(metrics=True)

    def pending(self) -> list[TrialSpec]:
        return [s for t, s in self.specs.items()
                if self.rows[t]["status"] not in self.skip_statuses]

    def skipped(self) -> list[TrialSpec]:
        return [s for t, s in self.specs.items() if self.rows[t]["status"] in self.skip_statuses]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for trial_id in self.specs:
            status = self.rows[trial_id]["status"]
            out[status] = out.get(status, 0) + 1
        return out

    # ------------------------------------------------------------ events
    def started(self, trial_id: str) -> None:
        """An attempt of this run begins: the row now describes this code and packages (the
        first attempt's commit stays in first_git_commit)."""
        row = self.rows[trial_id]
        first = (row.get("first_git_commit") or row.get("git_commit")
                 or self.provenance["git_commit"])
        self._set(trial_id, status="running", first_git_commit=first, **self.provenance)
        self.on_change(self, f"{trial_id} started")

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        spec = self.specs[trial_id]
        epoch = int(result["epoch"])
        self.metrics[(trial_id, epoch)] = self._metric_row(spec, result)
        changes: dict[str, Any] = {k: str(result[k]) for k in CONTEXT_KEYS if k in result}
        changes.update({k: result[k] for k in ATTEMPT_KEYS if k in result})
        if "attempt" in result:
            changes["attempts"] = max(int(result["attempt"]), int(self.rows[trial_id]["attempts"]))
        self._set(trial_id, write=False, status="running", **changes)
        self._update_progress(trial_id)
        self.write(metrics=True)
        row = self.rows[trial_id]
        self.on_change(self, f"{trial_id} epoch {epoch}/{row['epochs']} "
                             f"val_acc1 {float(result['val_acc1']):.2f}")

    def finished(self, trial_id: str) -> None:
        """The trainable returned, or a scheduler ended it (then no outcome is stored)."""
        state = self.store.state(trial_id)
        for metrics in state["history"]:   # epochs whose Tune result never reached us
            self.metrics.setdefault((trial_id, int(metrics["epoch"])),
                                    self._metric_row(self.specs[trial_id], metrics))
        self._update_progress(trial_id)
        # an attempt that found nothing left to train reported no epoch: take it from the store
        attempts = max(int(self.rows[trial_id]["attempts"]), state["attempts"])
        self._set(trial_id, write=False,
                  status=state["outcome"] or self._outcome_of_stopped(trial_id),
                  error="", attempts=attempts, start_epoch=max(int(state["start_epoch"]), 0))
        self.write(metrics=True)
        self.on_change(self, f"{trial_id} {self.rows[trial_id]['status']}")

    def _outcome_of_stopped(self, trial_id: str) -> str:
        """A trial Tune ended before the trainable returned (a scheduler stopped it).

        A scheduler may stop it at its very last epoch (ASHA does at max_t) or at the epoch
        whose loss was not finite: those are completed and diverged as if it had returned.
        """
        row = self.rows[trial_id]
        last = self.metrics.get((trial_id, int(row["epochs_done"])))
        if last is not None and not math.isfinite(last["train_loss"]):
            return "diverged"
        if int(row["epochs_done"]) >= int(row["epochs"]):
            return "completed"
        return "stopped"

    def errored(self, trial_id: str, error: str, final: bool) -> None:
        self._set(trial_id, status="failed" if final else "running", error=error)
        self.on_change(self, f"{trial_id} {'failed' if final else 'retrying'}: {error}")

    def interrupted(self) -> None:
        """After Tune returned: trials still marked running were cut short (they resume)."""
        for trial_id in self.specs:
            if self.rows[trial_id]["status"] == "running":
                self.rows[trial_id]["status"] = "pending"
        self.write(metrics=False)

    # ------------------------------------------------------------ rows and files
    def _metric_row(self, spec: TrialSpec, metrics: dict[str, Any]) -> dict[str, Any]:
        from trainers.records import metric_row

        return metric_row(spec.config, metrics, self.experiment, spec.trial_id)

    def _new_row(self, spec: TrialSpec) -> dict[str, Any]:
        c = spec.config
        return {
            "experiment": self.experiment, "trial_id": spec.trial_id, "dataset": c.dataset,
            "arch": c.arch, "depth": int(c.depth), "norm": c.norm, "afwd": float(c.afwd),
            "abkw": float(c.abkw), "ecm": c.ecm, "seed": c.seed, "status": "pending",
            "epochs": int(c.epochs), "epochs_done": 0, "best_epoch": 0,
            "best_val_acc1": float("nan"),
            "config_json": json.dumps(spec.recorded_config(), sort_keys=True),
            "attempts": 0, "error": "", "host": "", "device": "", "node_id": "", "gpu_ids": "",
            "start_epoch": 0, "started_at": float("nan"), **self.provenance,
            "first_git_commit": "", "updated_at": time.time(),
        }

    def _set(self, trial_id: str, write: bool = True, **changes: Any) -> None:
        row = self.rows[trial_id]
        row.update(changes)
        row["updated_at"] = time.time()
        if write:
            self.write(metrics=False)

    def _update_progress(self, trial_id: str) -> None:
        epochs = [(e, m) for (t, e), m in self.metrics.items() if t == trial_id]
        row = self.rows[trial_id]
        row["epochs_done"] = max((e for e, _ in epochs), default=0)
        scored = [(m["val_acc1"], e) for e, m in epochs if not math.isnan(m["val_acc1"])]
        if scored:
            acc, epoch = max(scored, key=lambda p: (p[0], -p[1]))  # earliest of equal bests
            row["best_epoch"], row["best_val_acc1"] = int(epoch), float(acc)

    def write(self, metrics: bool) -> None:
        import pandas as pd

        from trainers.records import rows_frame, write_parquet_atomic

        if metrics:
            rows = [self.metrics[k] for k in sorted(self.metrics)]
            write_parquet_atomic(rows_frame(rows), self.layout.metrics)
        trials = pd.DataFrame(list(self.rows.values()), columns=TRIAL_COLUMNS)
        trials["seed"] = trials["seed"].astype("Int64")
        trials["started_at"] = trials["started_at"].astype("float64")
        for col in ("depth", "epochs", "epochs_done", "best_epoch", "attempts", "start_epoch"):
            trials[col] = trials[col].fillna(0).astype("int64")  # rows of older files
        write_parquet_atomic(trials, self.layout.trials)
