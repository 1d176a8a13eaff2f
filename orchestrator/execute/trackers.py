"""Experiment-tracker logs of every trial, written by the driver from the de-duplicated record.

TensorBoard always (event files under the experiment folder's `tensorboard/<run name>/`, one
run folder per trial), MLflow and W&B on request (`--log mlflow`, `--log wandb`; optional
packages). The recorder calls `sync` whenever a trial's recorded epochs change; each tracker
then holds exactly the record's epochs, one value per metric per epoch (the epoch is the
step), whatever retries and resumes re-reported:

- epochs the record gained at its end are appended;
- when an epoch the tracker holds disagrees with the record (the recorder repaired the row
  from the trial store, or rebuilt a damaged file from it) or is missing from it, the
  trial's tracker log is replaced by one written from the record: the store is the source
  of truth, and tracker logs are derived from it like the Parquet files. TensorBoard's
  event files of the trial are deleted and rewritten; the MLflow run is deleted (MLflow
  keeps a deleted run, restorable, until `mlflow gc`) and a new one logged; W&B gets a new
  offline run.

What a tracker already holds is read back from it when a driver first touches the trial
(TensorBoard's event files, MLflow's metric history; W&B's offline runs cannot be read back,
so the W&B tracker keeps a ledger, and logs a trial whose run a killed driver left open
again whole: see WandB). A tracker that fails says so in one line and is left alone for the
rest of the run; the next run catches up from the record.

The trackers write local files only. With results on an object store they write into a
local staging folder, filled at the start with what the bucket holds of their folders and
uploaded back (the files that changed) at most every UPLOAD_EVERY_S and when the run ends:
a driver killed in between loses only the tracker logs since the last upload, which the
next run rewrites from the record like any tracker log that fell behind.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import socket
import struct
import time
from pathlib import Path
from typing import Any, Callable

from orchestrator import storage
from orchestrator.layout import ExperimentLayout
from orchestrator.plan.trials import TrialSpec
from orchestrator.report.option_labels import compact_options
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
# what load() returns for a log that cannot be continued: epoch 0 is in no record, so sync
# replaces it with one written from the record
UNUSABLE: Epochs = {0: {}}


def run_name(spec: TrialSpec) -> str:
    """A readable, unique folder name: 'online-1023_1024-127_128-ls-seed0-<trial_id>'."""
    c = spec.config
    from norms.modes import options_of

    options = compact_options(c.norm, {k: getattr(c, k) for k in options_of(c.norm)})
    seed = "noseed" if c.seed is None else f"seed{c.seed}"
    parts = [c.norm, *options.replace("/", "_").split(), seed, spec.trial_id]
    return "-".join(re.sub(r"[^A-Za-z0-9._=+]", "_", p) for p in parts if p)


def tracked_values(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(row[k]) for k in TRACKED}


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


class EpochLog:
    """One tracker: keeps, per trial, the epochs it holds; subclasses read, write, replace."""

    name = "tracker"

    def __init__(self, layout: ExperimentLayout):
        self.layout = layout
        self.held: dict[str, Epochs] = {}
        self.status: dict[str, str] = {}

    def sync(self, spec: TrialSpec, epochs: Epochs, status: str) -> None:
        trial_id = spec.trial_id
        if trial_id not in self.held:
            self.held[trial_id] = self.load(spec)
        held = self.held[trial_id]
        top = max(held, default=0)
        if (any(e not in epochs or not self.same(v, epochs[e]) for e, v in held.items())
                or any(e < top and e not in held for e in epochs)):
            self.replace(spec)
            held = self.held[trial_id] = {}
        new = sorted(e for e in epochs if e not in held)
        if new:
            self.append(spec, [(e, epochs[e]) for e in new])
            held.update({e: self.as_held(epochs[e]) for e in new})
        if self.status.get(trial_id) != status and (held or status != "pending"):
            self.set_status(spec, status)
            self.status[trial_id] = status

    # what subclasses provide
    def load(self, spec: TrialSpec) -> Epochs:
        """The epochs the tracker already holds of this trial (from an earlier driver)."""
        return {}

    def as_held(self, recorded: dict[str, float]) -> dict[str, float]:
        """The values as this tracker stores them (TensorBoard: float32)."""
        return recorded

    def same(self, held: dict[str, float], recorded: dict[str, float]) -> bool:
        ours = self.as_held(recorded)
        return all(_equal(held.get(k), ours[k]) for k in TRACKED)

    def append(self, spec: TrialSpec, epochs: list[tuple[int, dict[str, float]]]) -> None:
        raise NotImplementedError

    def replace(self, spec: TrialSpec) -> None:
        """Forget what is held of the trial; the next append starts a new log of it."""

    def set_status(self, spec: TrialSpec, status: str) -> None:
        pass

    def close(self) -> None:
        pass


def _equal(a: float | None, b: float) -> bool:
    if a is None:
        return False
    return (math.isnan(a) and math.isnan(b)) or a == b


def _float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


# ---------------------------------------------------------------- TensorBoard
class TensorBoard(EpochLog):
    """Event files through tensorboardX's record writer (installed with ray[tune]): one
    event per epoch holding every metric, so an epoch is in a file whole or not at all."""

    name = "tensorboard"

    def __init__(self, layout: ExperimentLayout):
        super().__init__(layout)
        self.writers: dict[str, Any] = {}

    def folder(self, spec: TrialSpec) -> Path:
        return self.layout.tensorboard_run(run_name(spec))

    def load(self, spec: TrialSpec) -> Epochs:
        held: Epochs = {}
        for step, values in read_scalars(self.folder(spec)):
            if step in held or set(values) != set(TRACKED):
                return dict(UNUSABLE)   # a step twice, or not whole
            held[step] = values
        return held

    def as_held(self, recorded: dict[str, float]) -> dict[str, float]:
        return {k: _float32(v) for k, v in recorded.items()}

    def append(self, spec: TrialSpec, epochs: list[tuple[int, dict[str, float]]]) -> None:
        from tensorboardX.proto import event_pb2, summary_pb2

        writer = self.writers.get(spec.trial_id) or self._open(spec)
        for epoch, values in epochs:
            summary = summary_pb2.Summary(value=[
                summary_pb2.Summary.Value(tag=k, simple_value=values[k]) for k in TRACKED])
            event = event_pb2.Event(wall_time=time.time(), step=int(epoch), summary=summary)
            writer.write(event.SerializeToString())
        writer.flush()   # fsyncs: `tensorboard --logdir` sees the epoch now

    def _open(self, spec: TrialSpec):
        from tensorboardX.proto import event_pb2
        from tensorboardX.record_writer import RecordWriter

        folder = self.folder(spec)
        folder.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads a run's files in name order: a fixed-width time sorts them
        stem = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
        path, n = folder / f"{stem}.{os.getpid()}", 0
        while path.exists():
            n += 1
            path = folder / f"{stem}.{os.getpid()}.{n}"
        writer = RecordWriter(str(path))
        writer.write(event_pb2.Event(wall_time=time.time(),
                                     file_version="brain.Event:2").SerializeToString())
        self.writers[spec.trial_id] = writer
        return writer

    def replace(self, spec: TrialSpec) -> None:
        writer = self.writers.pop(spec.trial_id, None)
        if writer is not None:
            writer.close()
        for path in event_files(self.folder(spec)):
            path.unlink(missing_ok=True)

    def set_status(self, spec: TrialSpec, status: str) -> None:
        if status not in ("running", "pending") and spec.trial_id in self.writers:
            self.writers.pop(spec.trial_id).close()   # the trial is over: free the file

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []


def read_scalars(folder: Path) -> list[tuple[int, dict[str, float]]]:
    """Every scalar event of a run folder's event files, in order: (step, {tag: value}).

    Reads TensorBoard's record format (length, crc, data, crc) with tensorboardX's protobufs;
    a record cut short (a driver killed while writing) ends that file, as in TensorBoard."""
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    out = []
    for path in event_files(folder):
        data = path.read_bytes()
        at = 0
        while at + 12 <= len(data):
            header = data[at:at + 8]
            (length,) = struct.unpack("<Q", header)
            (header_crc,) = struct.unpack("<I", data[at + 8:at + 12])
            body = data[at + 12:at + 12 + length]
            if (header_crc != masked_crc32c(header) or len(body) < length
                    or at + 16 + length > len(data)):
                break
            (body_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
            if body_crc != masked_crc32c(body):
                break
            at += 16 + length
            event = event_pb2.Event.FromString(body)
            if event.HasField("summary"):
                values = {v.tag: v.simple_value for v in event.summary.value
                          if v.WhichOneof("value") == "simple_value"}
                if values:
                    out.append((int(event.step), values))
    return out


# ---------------------------------------------------------------- MLflow
class MLflow(EpochLog):
    """One MLflow run per trial, named by its trial id, with the trial's config as
    parameters; in the experiment folder's file store unless MLFLOW_TRACKING_URI is set."""

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
        self.runs: dict[str, str] = {}

    def _find(self, trial_id: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`onorm.trial_id` = '{trial_id}'",
            max_results=1)
        return runs[0].info.run_id if runs else None

    def load(self, spec: TrialSpec) -> Epochs:
        run_id = self._find(spec.trial_id)
        if run_id is None:
            return {}
        self.runs[spec.trial_id] = run_id
        held: dict[int, dict[str, float]] = {}
        for key in TRACKED:
            for metric in self.client.get_metric_history(run_id, key):
                values = held.setdefault(int(metric.step), {})
                if key in values:   # a step logged twice
                    return dict(UNUSABLE)
                values[key] = float(metric.value)
        return held

    def _create(self, spec: TrialSpec) -> str:
        from mlflow.entities import Param

        c = spec.config
        tags = {"onorm.trial_id": spec.trial_id, "onorm.experiment": self.layout.name,
                "mlflow.runName": spec.trial_id, "norm": c.norm,
                "seed": "" if c.seed is None else str(c.seed), "onorm.run_name": run_name(spec)}
        run = self.client.create_run(self.experiment_id, run_name=spec.trial_id, tags=tags)
        params = [Param(k, json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v))
                  for k, v in sorted(spec.recorded_config().items())]
        for start in range(0, len(params), 100):   # MLflow takes at most 100 params a batch
            self.client.log_batch(run.info.run_id, params=params[start:start + 100])
        self.runs[spec.trial_id] = run.info.run_id
        return run.info.run_id

    def append(self, spec: TrialSpec, epochs: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        run_id = self.runs.get(spec.trial_id) or self._create(spec)
        now = int(time.time() * 1000)
        metrics = [Metric(k, values[k], now, int(epoch)) for epoch, values in epochs
                   for k in TRACKED]
        for start in range(0, len(metrics), 1000):   # MLflow's limit per batch
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])

    def replace(self, spec: TrialSpec) -> None:
        run_id = self.runs.pop(spec.trial_id, None)
        if run_id is not None:
            self.client.delete_run(run_id)

    def set_status(self, spec: TrialSpec, status: str) -> None:
        run_id = self.runs.get(spec.trial_id)
        if run_id is None:
            return
        self.client.set_tag(run_id, "onorm.status", status)
        if status == "running":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, MLFLOW_STATUS.get(status, "FINISHED"))


# ---------------------------------------------------------------- W&B
class WandB(EpochLog):
    """One W&B run per trial in offline mode (unless WANDB_MODE says otherwise), named by
    its trial id, with its config; `wandb sync <experiment>/wandb/wandb/offline-run-*`
    uploads them.

    W&B writes its offline file in a background process, and an offline run cannot be read
    back: what a driver killed with a trial's run open had logged may be lost. So
    `wandb/onorm-ledger.json` keeps, per trial, its run's id and folder, the epochs handed
    to it and whether it was finished (W&B's files complete). A later driver trusts a
    finished or uploaded run; a trial whose run was left unfinished, or was finished before
    the trial had more epochs and never uploaded, is logged again whole from the record into
    a new run, and the old run's folder is removed. An uploaded run (`wandb sync` left its
    `.wandb.synced` marker) is never removed: it is continued under its id."""

    name = "wandb"

    def __init__(self, layout: ExperimentLayout):
        super().__init__(layout)
        import wandb

        self.wandb = wandb
        self.open: dict[str, Any] = {}
        self.ledger_path = layout.wandb / "onorm-ledger.json"
        try:
            self.ledger = json.loads(self.ledger_path.read_text())
        except (OSError, ValueError):
            self.ledger = {}

    def sync(self, spec: TrialSpec, epochs: Epochs, status: str) -> None:
        entry = self.ledger.get(spec.trial_id)
        if (entry and spec.trial_id not in self.open and entry.get("finished")
                and not _synced(entry) and any(str(e) not in entry["epochs"] for e in epochs)):
            self._discard(spec.trial_id)   # more epochs: log the trial whole, in one run
            self.held[spec.trial_id] = {}
        super().sync(spec, epochs, status)

    def load(self, spec: TrialSpec) -> Epochs:
        entry = self.ledger.get(spec.trial_id)
        if not entry:
            return {}
        if entry.get("finished") or _synced(entry):
            return {int(e): v for e, v in entry["epochs"].items()}
        self._discard(spec.trial_id)   # left open by a driver that died: maybe incomplete
        return {}

    def _discard(self, trial_id: str) -> None:
        entry = self.ledger.pop(trial_id, None) or {}
        folder = Path(entry.get("dir") or "")
        if entry.get("dir") and folder.is_dir() and not _synced(entry):
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        self._write_ledger()

    def _write_ledger(self) -> None:
        from trainers.atomic import write_text_atomically

        self.layout.wandb.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.ledger_path, json.dumps(self.ledger, allow_nan=True))

    def _run(self, spec: TrialSpec):
        run = self.open.get(spec.trial_id)
        if run is not None:
            return run
        entry = self.ledger.get(spec.trial_id) or {
            "run_id": f"{spec.trial_id}-{secrets.token_hex(4)}", "epochs": {}}
        self.layout.wandb.mkdir(parents=True, exist_ok=True)
        run = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT") or f"onorm-{self.layout.name}",
            name=spec.trial_id, id=entry["run_id"], resume="allow",
            config=spec.recorded_config(), dir=str(self.layout.wandb),
            mode=os.environ.get("WANDB_MODE") or "offline", reinit="create_new",
            settings=self.wandb.Settings(silent=True, console="off"))
        run.define_metric("*", step_metric="epoch")
        sync_dir = getattr(getattr(run, "settings", None), "sync_dir", None)
        entry.update(dir=str(sync_dir) if sync_dir else entry.get("dir", ""), finished=False)
        self.ledger[spec.trial_id] = entry
        self.open[spec.trial_id] = run
        return run

    def append(self, spec: TrialSpec, epochs: list[tuple[int, dict[str, float]]]) -> None:
        run = self._run(spec)
        entry = self.ledger[spec.trial_id]
        for epoch, values in epochs:
            run.log({"epoch": int(epoch), **values})
            entry["epochs"][str(epoch)] = values
        self._write_ledger()

    def replace(self, spec: TrialSpec) -> None:
        run = self.open.pop(spec.trial_id, None)
        if run is not None:
            run.finish(exit_code=1)
        self._discard(spec.trial_id)

    def set_status(self, spec: TrialSpec, status: str) -> None:
        if status != "running" and spec.trial_id in self.open:
            self._finish(spec.trial_id, 1 if status == "failed" else 0)

    def _finish(self, trial_id: str, exit_code: int = 0) -> None:
        self.open.pop(trial_id).finish(exit_code=exit_code)   # returns once W&B's files are
        self.ledger[trial_id]["finished"] = True               # complete
        self._write_ledger()

    def close(self) -> None:
        for trial_id in list(self.open):
            self._finish(trial_id)


def _synced(entry: dict[str, Any]) -> bool:
    folder = Path(entry.get("dir") or "")
    return bool(entry.get("dir")) and folder.is_dir() and any(folder.glob("*.wandb.synced"))


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
        return [(self.layout.tensorboard, local.tensorboard), (self.layout.mlflow, local.mlflow),
                (self.layout.wandb, local.wandb)]

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
        values = {e: tracked_values(m) for e, m in epochs.items()}
        for tracker in list(self._start()):
            self._guard(tracker.name, lambda t=tracker: t.sync(spec, values, status), tracker)
        self._upload(every=UPLOAD_EVERY_S)

    def close(self) -> None:
        for tracker in list(self.active or ()):
            self._guard(tracker.name, tracker.close, tracker)
        if self.staging is not None:
            import shutil

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
