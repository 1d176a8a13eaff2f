"""Experiment-tracker logs of every trial, written by the driver from the de-duplicated record.

TensorBoard always (`tensorboard/<run name>/`, one run folder per trial), MLflow and W&B on
request (`--log mlflow`, `--log wandb`; optional packages). The recorder calls `sync` when a
trial's recorded epochs or status change; each tracker then holds exactly the record's
epochs, one value per metric per epoch (the epoch is the step), whatever retries, resumes
and repairs re-reported. Each keeps a note per trial of the values it wrote
(`tracker-notes/`, written after them), so it knows without reading itself back what to
append and whether an epoch it holds disagrees with the record (a row repaired from the
trial store, an epoch a retry trained again): then the trial's log is replaced by one written
whole from the record, the store being the source of truth. Epochs a killed driver wrote
after its last note are dropped by TensorBoard itself: a trial's next event file starts with
TensorBoard's purge marker at the first epoch it writes (as `SummaryWriter(purge_step=...)`
does); an MLflow or W&B run left open by a killed driver is replaced whole (W&B writes in the
background and may have lost what it was given). A tracker that fails says so in one line and
is left alone for the rest of the run; the next run catches up from the record.

With results on an object store the trackers write a local staging folder, filled at the
start from the bucket and uploaded back (the files that changed) at most every UPLOAD_EVERY_S
and when the run ends; what a killed driver had not uploaded, the next run rewrites.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable

from orchestrator import storage
from orchestrator.layout import ExperimentLayout
from orchestrator.plan.trials import TrialSpec
from orchestrator.report.option_labels import compact_options
from trainers.atomic import write_text_atomically
from trainers.errors import UserError
from trainers.records import EPOCH_METRIC_KEYS

# One scalar per metric per epoch, named as in metrics.parquet; the epoch is the step.
TRACKED = tuple(EPOCH_METRIC_KEYS[1:])
# --log choices (TensorBoard is always on) and the package each needs
OPTIONAL = {"mlflow": ("mlflow", "mlflow-skinny"), "wandb": ("wandb", "wandb")}
# How each tracker's run ends, by trial status (pending: cut short by an interrupt).
MLFLOW_STATUS = {"running": "RUNNING", "completed": "FINISHED", "diverged": "FINISHED",
                 "stopped": "FINISHED", "failed": "FAILED", "pending": "KILLED"}

Epochs = dict[int, dict[str, float]]


def run_name(spec: TrialSpec) -> str:
    """A readable, unique folder name: 'online-1023_1024-127_128-ls-seed0-<trial_id>'."""
    c = spec.config
    from norms.modes import options_of

    options = compact_options(c.norm, {k: getattr(c, k) for k in options_of(c.norm)})
    seed = "noseed" if c.seed is None else f"seed{c.seed}"
    parts = [c.norm, *options.replace("/", "_").split(), seed, spec.trial_id]
    return "-".join(re.sub(r"[^A-Za-z0-9._=+]", "_", p) for p in parts if p)


def check_available(names: list[str]) -> None:
    """A UserError (one line) for a --log tracker whose package is not installed."""
    for name in names:
        module, package = OPTIONAL[name]
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"--log {name} needs the optional package {package}: install it "
                            f"with `pip install 'onorm[{name}]'`, or leave out --log {name}"
                            ) from None


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(a.get(k) == b[k] or (math.isnan(a.get(k, 0.0)) and math.isnan(b[k]))
               for k in TRACKED)


class EpochLog:
    """One tracker: its note of each trial decides what to append and when to start over;
    subclasses write (`append`), drop a trial's log (`restart`) and end its run."""

    name = "tracker"
    # whether a log that a killed driver left open can be appended to
    continues_after_kill = False

    def __init__(self, layout: ExperimentLayout):
        self.layout = layout
        self.notes: dict[str, dict[str, Any]] = {}
        self.status: dict[str, str] = {}
        self.started: set[str] = set()   # trials whose log this driver started afresh

    def sync(self, spec: TrialSpec, epochs: Epochs, status: str) -> None:
        note = self._note(spec)
        written = note["epochs"]
        top = max(written, default=0)
        if (any(e not in epochs or not _same(v, epochs[e]) for e, v in written.items())
                or any(e < top and e not in written for e in epochs)
                or (written and set(epochs) - set(written) and not self.extends(spec, note))):
            note = self._restart(spec, note)
        new = sorted(e for e in epochs if e not in note["epochs"])
        if new:
            if not note["epochs"] and spec.trial_id not in self.started:
                note = self._restart(spec, note)   # whatever a log without a note holds goes
            self.append(spec, note, [(e, epochs[e]) for e in new])
            note["epochs"].update({e: epochs[e] for e in new})
            note["open"] = True
            self._save(spec.trial_id, note)
        if self.status.get(spec.trial_id) != status and (note["epochs"] or status != "pending"):
            self.set_status(spec, note, status)
            self.status[spec.trial_id] = status
            if status not in ("running", "pending") and note.pop("open", False):
                self._save(spec.trial_id, note)   # the trial is over: its log is whole

    def _note(self, spec: TrialSpec) -> dict[str, Any]:
        """The trial's note, read when this driver first touches the trial."""
        if spec.trial_id not in self.notes:
            try:
                note = json.loads(self._note_path(spec.trial_id).read_text())
                note["epochs"] = {int(e): v for e, v in note["epochs"].items()}
            except (OSError, ValueError, KeyError, AttributeError):
                note = {"epochs": {}}
            self.notes[spec.trial_id] = note
            if note.get("open") and not self.continues_after_kill:
                return self._restart(spec, note)
        return self.notes[spec.trial_id]

    def _restart(self, spec: TrialSpec, note: dict[str, Any]) -> dict[str, Any]:
        """Drop the trial's log; its note says so at once (a driver killed before the new
        log's first note must not trust the old one)."""
        self.restart(spec, note)
        self.started.add(spec.trial_id)
        self.notes[spec.trial_id] = {"epochs": {}}
        self._save(spec.trial_id, self.notes[spec.trial_id])
        return self.notes[spec.trial_id]

    def _note_path(self, trial_id: str) -> Path:
        return Path(self.layout.tracker_note(self.name, trial_id))

    def _save(self, trial_id: str, note: dict[str, Any]) -> None:
        path = self._note_path(trial_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(note, allow_nan=True))

    def close(self) -> None:
        """The run ends: every log is closed, so its note says a later driver may go on."""
        self.close_logs()
        for trial_id, note in self.notes.items():
            if note.pop("open", False):
                self._save(trial_id, note)

    # what subclasses provide
    def append(self, spec: TrialSpec, note: dict[str, Any],
               epochs: list[tuple[int, dict[str, float]]]) -> None:
        raise NotImplementedError

    def restart(self, spec: TrialSpec, note: dict[str, Any]) -> None:
        """Drop what the tracker holds of the trial; the next append starts a new log."""

    def extends(self, spec: TrialSpec, note: dict[str, Any]) -> bool:
        """Whether the log the note describes can take more epochs."""
        return True

    def set_status(self, spec: TrialSpec, note: dict[str, Any], status: str) -> None:
        pass

    def close_logs(self) -> None:
        pass


# ---------------------------------------------------------------- TensorBoard
class TensorBoard(EpochLog):
    """Event files through tensorboardX's record writer (installed with ray[tune]): one
    event per epoch holding every metric, so an epoch is in a file whole or not at all."""

    name = "tensorboard"
    continues_after_kill = True   # the purge marker drops what the note does not list

    def __init__(self, layout: ExperimentLayout):
        super().__init__(layout)
        self.writers: dict[str, Any] = {}

    def folder(self, spec: TrialSpec) -> Path:
        return self.layout.tensorboard_run(run_name(spec))

    def append(self, spec, note, epochs) -> None:
        from tensorboardX.proto import event_pb2, summary_pb2

        writer = self.writers.get(spec.trial_id) or self._open(spec, epochs[0][0])
        for epoch, values in epochs:
            summary = summary_pb2.Summary(value=[
                summary_pb2.Summary.Value(tag=k, simple_value=values[k]) for k in TRACKED])
            event = event_pb2.Event(wall_time=time.time(), step=int(epoch), summary=summary)
            writer.write(event.SerializeToString())
        writer.flush()   # fsyncs: `tensorboard --logdir` sees the epoch now

    def _open(self, spec: TrialSpec, first_epoch: int):
        """A new event file whose first events tell TensorBoard to drop what the trial's
        earlier files hold from `first_epoch` on (a restart at that step)."""
        from tensorboardX.proto import event_pb2
        from tensorboardX.record_writer import RecordWriter

        folder = self.folder(spec)
        folder.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads a run's files in name order: seconds, then nanoseconds
        now = time.time_ns()
        path = folder / f"events.out.tfevents.{now // 10**9:010d}.{socket.gethostname()}" \
                        f".{now % 10**9:09d}"
        writer = RecordWriter(str(path))
        for event in (event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"),
                      event_pb2.Event(wall_time=time.time(), step=int(first_epoch),
                                      session_log=event_pb2.SessionLog(
                                          status=event_pb2.SessionLog.START))):
            writer.write(event.SerializeToString())
        self.writers[spec.trial_id] = writer
        return writer

    def restart(self, spec, note) -> None:
        writer = self.writers.pop(spec.trial_id, None)
        if writer is not None:
            writer.close()
        folder = self.folder(spec)
        for path in folder.glob("events.out.tfevents.*") if folder.is_dir() else ():
            path.unlink(missing_ok=True)

    def set_status(self, spec, note, status) -> None:
        if status not in ("running", "pending") and spec.trial_id in self.writers:
            self.writers.pop(spec.trial_id).close()   # the trial is over: free the file

    def close_logs(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


# ---------------------------------------------------------------- MLflow
class MLflow(EpochLog):
    """One MLflow run per trial, named by its trial id, with the trial's config as
    parameters; in the experiment folder's file store unless MLFLOW_TRACKING_URI is set.
    A run is replaced by deleting it (MLflow keeps it, restorable, until `mlflow gc`)."""

    name = "mlflow"

    def __init__(self, layout: ExperimentLayout):
        super().__init__(layout)
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = layout.mlflow.absolute().as_uri()
            # MLflow 3 keeps its file store only on request; mlflow-skinny has no database
            # backend, and the file store is what works offline with nothing else installed
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(layout.name)
        self.experiment_id = (found.experiment_id if found is not None
                              else self.client.create_experiment(layout.name))

    def append(self, spec, note, epochs) -> None:
        from mlflow.entities import Metric, Param

        if not note.get("run_id"):
            c = spec.config
            tags = {"onorm.trial_id": spec.trial_id, "onorm.experiment": self.layout.name,
                    "mlflow.runName": spec.trial_id, "norm": c.norm,
                    "seed": "" if c.seed is None else str(c.seed),
                    "onorm.run_name": run_name(spec)}
            run = self.client.create_run(self.experiment_id, run_name=spec.trial_id, tags=tags)
            note["run_id"] = run.info.run_id
            params = [Param(k, json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v))
                      for k, v in sorted(spec.recorded_config().items())]
            for start in range(0, len(params), 100):   # MLflow takes at most 100 params a batch
                self.client.log_batch(note["run_id"], params=params[start:start + 100])
        now = int(time.time() * 1000)
        metrics = [Metric(k, values[k], now, int(epoch)) for epoch, values in epochs
                   for k in TRACKED]
        for start in range(0, len(metrics), 1000):   # MLflow's limit per batch
            self.client.log_batch(note["run_id"], metrics=metrics[start:start + 1000])

    def restart(self, spec, note) -> None:
        runs = [note["run_id"]] if note.get("run_id") else [  # runs whose note was lost
            r.info.run_id for r in self.client.search_runs(
                [self.experiment_id], f"tags.`onorm.trial_id` = '{spec.trial_id}'")]
        for run_id in runs:
            self.client.delete_run(run_id)

    def set_status(self, spec, note, status) -> None:
        if not note.get("run_id"):
            return
        self.client.set_tag(note["run_id"], "onorm.status", status)
        if status == "running":
            self.client.update_run(note["run_id"], status="RUNNING")
        else:
            self.client.set_terminated(note["run_id"], MLFLOW_STATUS.get(status, "FINISHED"))


# ---------------------------------------------------------------- W&B
class WandB(EpochLog):
    """One W&B run per trial in offline mode (unless WANDB_MODE says otherwise), named by
    its trial id, with its config; `wandb sync <experiment>/wandb/wandb/offline-run-*`
    uploads them.

    A run takes epochs only while the driver that opened it runs: a trial whose finished
    run, not yet uploaded, gains epochs is logged again whole into a new run (and the old
    run's folder removed), so the folder holds one complete run per trial. A run `wandb
    sync` has uploaded (its `.wandb.synced` marker) is never removed: it is continued under
    its id."""

    name = "wandb"

    def __init__(self, layout: ExperimentLayout):
        super().__init__(layout)
        import wandb

        self.wandb = wandb
        self.open: dict[str, Any] = {}

    def extends(self, spec, note) -> bool:
        return spec.trial_id in self.open or _synced(note)

    def append(self, spec, note, epochs) -> None:
        run = self.open.get(spec.trial_id)
        if run is None:
            note.setdefault("run_id", f"{spec.trial_id}-{secrets.token_hex(4)}")
            self.layout.wandb.mkdir(parents=True, exist_ok=True)
            run = self.open[spec.trial_id] = self.wandb.init(
                project=os.environ.get("WANDB_PROJECT") or f"onorm-{self.layout.name}",
                name=spec.trial_id, id=note["run_id"], resume="allow",
                config=spec.recorded_config(), dir=str(self.layout.wandb),
                mode=os.environ.get("WANDB_MODE") or "offline", reinit="create_new",
                settings=self.wandb.Settings(silent=True, console="off"))
            run.define_metric("*", step_metric="epoch")
            sync_dir = getattr(getattr(run, "settings", None), "sync_dir", None)
            note["dir"] = str(sync_dir) if sync_dir else note.get("dir", "")
        for epoch, values in epochs:
            run.log({"epoch": int(epoch), **values})

    def restart(self, spec, note) -> None:
        run = self.open.pop(spec.trial_id, None)
        if run is not None:
            run.finish(exit_code=1)
        if note.get("dir") and not _synced(note):
            shutil.rmtree(note["dir"], ignore_errors=True)

    def set_status(self, spec, note, status) -> None:
        if status != "running" and spec.trial_id in self.open:
            # returns once W&B's files are complete
            self.open.pop(spec.trial_id).finish(exit_code=1 if status == "failed" else 0)

    def close_logs(self) -> None:
        for run in self.open.values():
            run.finish(exit_code=0)
        self.open.clear()


def _synced(note: dict[str, Any]) -> bool:
    return bool(note.get("dir")) and any(Path(note["dir"]).glob("*.wandb.synced"))


# How often the trackers' staging folder is uploaded, for results on an object store.
UPLOAD_EVERY_S = 60.0

KINDS: dict[str, Callable[[ExperimentLayout], EpochLog]] = {
    "tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


class Trackers:
    """The trackers of one run, started at the first sync (a run refused before it starts
    writes nothing); `say` prints the line about a tracker that failed."""

    def __init__(self, layout: ExperimentLayout, names: list[str] | tuple[str, ...] = (),
                 say: Callable[[str], None] = print):
        self.layout = layout
        self.names = ["tensorboard", *dict.fromkeys(n for n in names if n != "tensorboard")]
        self.say = say
        self.active: list[EpochLog] | None = None
        self.staging: Path | None = None   # the local copy of a remote folder's trackers
        self.uploaded_at = 0.0

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks (ours holds the recorder) into its experiment state,
        # which onorm never restores from: open files and clients stay out of it
        return {**self.__dict__, "active": None}

    def _start(self) -> list[EpochLog]:
        if self.active is None:
            self.active = []
            local = self._local_layout()
            for name in self.names:
                self._guard(name, lambda name=name: self.active.append(KINDS[name](local)))
        return self.active

    def _local_layout(self) -> ExperimentLayout:
        """The layout the trackers write: the experiment folder, or for a remote one a
        staging folder holding a copy of its tracker folders."""
        if not storage.is_remote(self.layout.dir):
            return self.layout
        import tempfile

        self.staging = Path(tempfile.mkdtemp(prefix="onorm-trackers-")) / self.layout.name
        local = ExperimentLayout(self.staging)
        for remote, copy in self._tracker_folders(local):
            storage.download_tree(remote, copy)
        self.uploaded_at = time.time()
        return local

    def _tracker_folders(self, local: ExperimentLayout):
        return [(getattr(self.layout, name), getattr(local, name))
                for name in ("tensorboard", "mlflow", "wandb", "tracker_notes")]

    def _upload(self, every: float = 0.0) -> None:
        """Copy the staging folder's changed files to the remote folder (at most every
        `every` seconds)."""
        if self.staging is None or time.time() - self.uploaded_at < every:
            return
        since, self.uploaded_at = self.uploaded_at, time.time()
        local = ExperimentLayout(self.staging)
        for remote, copy in self._tracker_folders(local):
            # 2 s of slack: a file written in the second the last upload began
            self._guard("upload", lambda r=remote, c=copy: storage.upload_tree(c, r, since - 2))

    def sync(self, spec: TrialSpec, epochs: dict[int, dict[str, Any]], status: str) -> None:
        values = {e: {k: float(m[k]) for k in TRACKED} for e, m in epochs.items()}
        for tracker in list(self._start()):
            self._guard(tracker.name, lambda t=tracker: t.sync(spec, values, status), tracker)
        self._upload(every=UPLOAD_EVERY_S)

    def close(self) -> None:
        for tracker in list(self.active or ()):
            self._guard(tracker.name, tracker.close, tracker)
        if self.staging is not None:
            self._upload()
            shutil.rmtree(self.staging.parent, ignore_errors=True)
            self.staging, self.active = None, None

    def _guard(self, name: str, action: Callable[[], Any], tracker: EpochLog | None = None):
        try:
            action()
        except Exception as err:   # a tracker's failure never stops the grid
            if tracker is not None and tracker in (self.active or ()):
                self.active.remove(tracker)
            text = " ".join(str(err).split())[:300] or type(err).__name__
            self.say(f"[{self.layout.name}] {name}: {text}; not logging to {name} for the "
                     "rest of this run (the next run catches up from the record)")
