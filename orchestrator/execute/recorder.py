"""The driver's record of a run: metrics.parquet and trials.parquet, updated as events arrive.

Only the driver writes these files, each time atomically (readers see the old file or the new
one). metrics.parquet has one row per (trial_id, epoch), last wins when a retry re-reports an
epoch; trials.parquet has one row per trial with its status and provenance. The trial store's
per-epoch history is the source of truth (it is written before Tune hears of an epoch): at
start the record is reconciled with it, so epochs the driver missed because it was killed are
filled in, rows that disagree with it are repaired (and counted), and a damaged Parquet file
is moved aside and rebuilt from it, each said in one line. Plain Python (no ray): the Tune
callback in runner.py only forwards events here.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Callable

from orchestrator import storage
from orchestrator.execute.store import TrialStore
from orchestrator.layout import DONE_STATUSES, ExperimentLayout
from orchestrator.plan.trials import TrialSpec
from trainers.errors import UserError
from trainers.parquet_io import DamagedParquet

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
PROVENANCE_KEYS = ("git_commit", "package_versions")


class Recorder:
    """Holds the run's rows in memory and rewrites the Parquet files after each event.

    `trials` are the run's plan; trials of the same folder outside it (an earlier plan, other
    batches of a search) keep their rows, rebuilt from the store's trial.json when needed.
    `say` prints the lines about repairs and damaged checkpoints (stderr by default).
    `trackers` (execute/trackers.py) get every change of a trial's epochs and status once
    `sync_trackers()` was called (when the run goes ahead): they log the record as it is.
    """

    def __init__(self, layout: ExperimentLayout, trials: list[TrialSpec],
                 provenance: dict[str, str], skip_statuses: tuple[str, ...] = DONE_STATUSES,
                 on_change: Callable[["Recorder", str], None] | None = None,
                 say: Callable[[str], None] | None = None, trackers: Any = None):
        self.experiment = layout.name
        self.layout = layout
        self.store = TrialStore(layout.store)
        self.specs = {t.trial_id: t for t in trials}
        self.provenance = provenance
        self.skip_statuses = skip_statuses
        self.on_change = on_change or (lambda recorder, message: None)
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.metrics: dict[tuple[str, int], dict[str, Any]] = {}
        self.rows: dict[str, dict[str, Any]] = {}
        self._warned: set[tuple[str, int]] = set()
        self.trackers = trackers
        self._tracking = False
        damaged = {}
        for path, required in ((layout.metrics, ("trial_id", "epoch")),
                               (layout.trials, ("trial_id",))):
            rows, damaged[path.name] = self._read(path, required)
            for row in rows:
                if path == layout.metrics:
                    self.metrics[(str(row["trial_id"]), int(row["epoch"]))] = row
                else:
                    self.rows[str(row["trial_id"])] = row
        self.known, unknown = self._known_specs()
        repaired = self.reconcile()
        for name, problem in damaged.items():
            if problem:
                rows = len(self.metrics) if name == layout.metrics.name else len(self.rows)
                missing = (f"; {len(unknown)} trial(s) in the store without a trial.json are "
                           f"not in this plan and were not rebuilt ({', '.join(unknown[:3])})"
                           if unknown else "")
                self.say(f"[{self.experiment}] {name} was damaged ({problem[0]}): moved it to "
                         f"{problem[1]} and rebuilt it from the trial store ({rows} rows)"
                         f"{missing}")
        if repaired:
            self.say(f"[{self.experiment}] {layout.metrics.name}: {repaired} row(s) disagreed "
                     "with the trial store and were repaired from it")
        # nothing recorded yet: write nothing until the run starts (a refused run leaves no
        # empty files behind)
        if self.metrics or any(damaged.values()) or storage.exists(layout.metrics) \
                or storage.exists(layout.trials):
            self.write(metrics=True)

    def _read(self, path, required: tuple[str, ...]) -> tuple[list[dict], tuple | None]:
        """(rows, None), or ([], (problem, where it went)) for a damaged file moved aside."""
        try:
            return storage.read_parquet(path, required=required).to_dict("records"), None
        except FileNotFoundError:
            return [], None
        except DamagedParquet as err:
            return [], (err.reason, storage.move_aside(path))

    def _known_specs(self) -> tuple[dict[str, TrialSpec], list[str]]:
        """The plan's specs plus those the store kept of other trials; and the store's trials
        that have neither (stores written before trial.json)."""
        known = dict(self.specs)
        unknown = []
        for trial_id in self.store.trial_ids():
            if trial_id in known:
                continue
            payload = self.store.spec(trial_id)
            try:
                known[trial_id] = TrialSpec.from_payload(payload)
            except (TypeError, KeyError, UserError):   # absent, or no longer a valid config
                if trial_id not in self.rows:
                    unknown.append(trial_id)
        return known, unknown

    # ------------------------------------------------------------ state
    def reconcile(self) -> int:
        """Make the record agree with the store: its epochs win over the Parquet rows, its
        outcomes over the statuses; the plan's other trials become pending. Returns how many
        rows disagreed with the store (missing ones are filled in without counting)."""
        repaired = 0
        for trial_id, spec in self.known.items():
            state = self.store.state(trial_id)
            for metrics in state["history"]:
                key = (trial_id, int(metrics["epoch"]))
                row = self._metric_row(spec, metrics)
                if key in self.metrics and not _same_row(self.metrics[key], row):
                    repaired += 1
                self.metrics[key] = row
            existing = self.rows.get(trial_id)
            if existing is None and trial_id not in self.specs and not state["attempts"]:
                continue
            # defaults first: rows written by an older version may lack newer columns
            row = {**self._new_row(spec), **(existing or {})}
            if existing is None:
                row.update(_row_from_store(state))
            row["attempts"] = max(int(row.get("attempts") or 0), state["attempts"])
            outcome = state["outcome"]
            if outcome in DONE_STATUSES or (outcome and outcome in self.skip_statuses):
                row["status"] = outcome
            elif trial_id in self.specs:
                if row.get("status") not in self.skip_statuses:
                    row["status"] = "pending"
            elif existing is None:
                row["status"] = outcome or "pending"
            elif row.get("status") == "running":   # no run of this folder is running it
                row["status"] = "pending"
            self.rows[trial_id] = row
            self._update_progress(trial_id)
        return repaired

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

    def sync_trackers(self, trial_ids=None) -> None:
        """Bring the trackers in line with the record (every known trial at the run's start,
        then the trials whose record changed); from here on they follow every change."""
        if self.trackers is None:
            return
        self._tracking = True
        ids = list(self.rows) if trial_ids is None else list(trial_ids)
        by_trial: dict[str, dict[int, dict[str, Any]]] = {t: {} for t in ids}
        for (trial_id, epoch), row in self.metrics.items():
            if trial_id in by_trial:
                by_trial[trial_id][epoch] = row
        for trial_id in ids:
            spec = self.known.get(trial_id)
            if spec is not None and (by_trial[trial_id] or trial_id in self.specs):
                self.trackers.sync(spec, by_trial[trial_id], self.rows[trial_id]["status"])

    def _track(self, trial_id: str) -> None:
        if self._tracking:
            self.sync_trackers([trial_id])

    def close_trackers(self) -> None:
        if self.trackers is not None:
            self.trackers.close()

    # ------------------------------------------------------------ events
    def started(self, trial_id: str) -> None:
        """An attempt of this run begins: the row now describes this code and packages (the
        first attempt's commit stays in first_git_commit)."""
        row = self.rows[trial_id]
        first = (row.get("first_git_commit") or row.get("git_commit")
                 or self.provenance["git_commit"])
        # the attempt's start until its worker reports its own (Tune starts it before the
        # worker has imported anything): `onorm status` shows how long it has been running
        self._set(trial_id, status="running", first_git_commit=first, started_at=time.time(),
                  **self.provenance)
        self._track(trial_id)
        self.on_change(self, f"{trial_id} started")

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        spec = self.specs[trial_id]
        epoch = int(result["epoch"])
        if result.get("warning"):
            self._warn(trial_id, int(result.get("attempt", 0)), str(result["warning"]))
        self.metrics[(trial_id, epoch)] = self._metric_row(spec, result)
        # the attempt's node says which code ran it (PROVENANCE_KEYS)
        changes: dict[str, Any] = {k: str(result[k]) for k in CONTEXT_KEYS + PROVENANCE_KEYS
                                   if k in result}
        changes.update({k: result[k] for k in ATTEMPT_KEYS if k in result})
        if "attempt" in result:
            changes["attempts"] = max(int(result["attempt"]), int(self.rows[trial_id]["attempts"]))
        self._set(trial_id, write=False, status="running", **changes)
        self._update_progress(trial_id)
        self.write(metrics=True)
        self._track(trial_id)
        row = self.rows[trial_id]
        self.on_change(self, f"{trial_id} epoch {epoch}/{row['epochs']} "
                             f"val_acc1 {float(result['val_acc1']):.2f}")

    def finished(self, trial_id: str) -> None:
        """The trainable returned, or a scheduler ended it (then no outcome is stored)."""
        state = self.store.state(trial_id)
        if state.get("warning"):
            self._warn(trial_id, state["attempts"], state["warning"])
        for metrics in state["history"]:   # epochs whose Tune result never reached us
            self.metrics[(trial_id, int(metrics["epoch"]))] = self._metric_row(
                self.specs[trial_id], metrics)
        self._update_progress(trial_id)
        status = state["outcome"] or self._outcome_of_stopped(trial_id)
        if state["outcome"] is None:   # the store keeps every outcome, a scheduler's too
            self.store.finish(trial_id, status)
        # an attempt that found nothing left to train reported no epoch: take it from the store
        attempts = max(int(self.rows[trial_id]["attempts"]), state["attempts"])
        self._set(trial_id, write=False, status=status,
                  error=state["error"] if status == "failed" else "", attempts=attempts,
                  start_epoch=max(int(state["start_epoch"]), 0))
        self.write(metrics=True)
        self._track(trial_id)
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
        # the attempt began in the store even when it died before reporting an epoch
        attempts = max(int(self.rows[trial_id]["attempts"]),
                       self.store.state(trial_id)["attempts"])
        self._set(trial_id, status="failed" if final else "running", error=error,
                  attempts=attempts)
        self._track(trial_id)
        self.on_change(self, f"{trial_id} {'failed' if final else 'retrying'}: {error}")

    def _warn(self, trial_id: str, attempt: int, text: str) -> None:
        """A line the trial's attempt sent (a damaged checkpoint), said once per attempt."""
        if (trial_id, attempt) not in self._warned:
            self._warned.add((trial_id, attempt))
            self.say(f"[{self.experiment}] warning: {text}")

    def interrupted(self) -> None:
        """After Tune returned: trials still marked running were cut short (they resume)."""
        reset = [t for t in self.specs if self.rows[t]["status"] == "running"]
        for trial_id in reset:
            self.rows[trial_id]["status"] = "pending"
        self.write(metrics=False)
        for trial_id in reset:
            self._track(trial_id)
        if reset:
            self.on_change(self, f"interrupted: {len(reset)} running trial(s) back to pending")

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

        from trainers.records import rows_frame

        if metrics:
            rows = [self.metrics[k] for k in sorted(self.metrics)]
            storage.write_parquet(self.layout.metrics, rows_frame(rows))
        trials = pd.DataFrame(list(self.rows.values()), columns=TRIAL_COLUMNS)
        trials["seed"] = trials["seed"].astype("Int64")
        trials["started_at"] = trials["started_at"].astype("float64")
        for col in ("depth", "epochs", "epochs_done", "best_epoch", "attempts", "start_epoch"):
            trials[col] = trials[col].fillna(0).astype("int64")  # rows of older files
        storage.write_parquet(self.layout.trials, trials)


def _row_from_store(state: dict[str, Any]) -> dict[str, Any]:
    """What the store knows of a trial's latest attempt, for a row rebuilt without one."""
    context = state.get("context") or {}
    out: dict[str, Any] = {k: str(context[k]) for k in CONTEXT_KEYS + PROVENANCE_KEYS
                           if k in context}
    if "started_at" in context:
        out["started_at"] = float(context["started_at"])
    out["first_git_commit"] = state.get("first_git_commit") or out.get("git_commit", "")
    out["start_epoch"] = int(state["start_epoch"])
    out["error"] = state["error"] if state["outcome"] == "failed" else ""
    return out


def _missing(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    import pandas as pd

    return value is pd.NA


def _same_row(recorded: dict[str, Any], stored: dict[str, Any]) -> bool:
    """A metrics.parquet row equals the one built from the store (NaN equals NaN)."""
    for key, value in stored.items():
        old = recorded.get(key)
        if _missing(value) or _missing(old):
            if not (_missing(value) and _missing(old)):
                return False
        elif old != value:
            return False
    return True
