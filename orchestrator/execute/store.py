"""The trial store: each trial's checkpoints and per-epoch history, kept beside the results.

With a local results root, trials may run on nodes that do not share it, so their
checkpoints travel as bytes to one store actor on the driver's node; with a root every node
reaches (an s3:// or gs:// URI), each trial's node writes its store directly
(execute/attempt.py). Either way the store is the experiment folder's `checkpoints/<trial_id>/`
holds the trainer's two latest checkpoints (`checkpoint-<epoch>.pth.tar`), `state.json`
(each checkpoint's epoch and sha256, attempts, the trial's outcome once it returned, and
every epoch's metrics: the source of truth for what the trial has done) and `trial.json`
(the trial's config, so that the Parquet files can be rebuilt from here alone). Every file
is replaced atomically (through orchestrator/storage.py: a local rename, or one object's
PUT), a checkpoint before the state that names it, so the state never points at a
checkpoint that was not completely written. A completed trial keeps its history and its
final checkpoint only.

A checkpoint whose bytes no longer match their checksum (a truncated or overwritten file)
is set aside as `<name>.damaged-<time>` and the trial resumes from the previous one, or from epoch
1 when none is intact; the attempt is told so in one line. This survives a SIGKILL of the
driver: the next `onorm run` resumes each trial from here. `TrialStore` is the
plain-Python core; the Ray actor wrapping it is made by `store_actor_class()` so this module
never imports ray.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from orchestrator import storage
from orchestrator.storage import Location

LEGACY_CHECKPOINT = "checkpoint.pth.tar"   # the one checkpoint of stores written before sha256s
STATE_NAME = "state.json"
SPEC_NAME = "trial.json"
KEEP = 2   # the latest checkpoint and the one before it
_CHECKPOINT_FILE = re.compile(r"checkpoint-(\d+)\.pth\.tar")


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint-{int(epoch)}.pth.tar"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_state(trial_dir: Location) -> dict[str, Any]:
    """The trial's state, or an empty one (epoch 0) when nothing was stored yet.

    An unreadable state.json gives an empty state marked `damaged` (its history is gone, but
    its checkpoint files are still found, unverified), never an exception.
    """
    path = trial_dir / STATE_NAME
    state: dict[str, Any] = {}
    try:
        state = json.loads(storage.read_text(path))
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as err:   # JSONDecodeError and UnicodeDecodeError included
        state = {"damaged": f"{STATE_NAME} is unreadable ({type(err).__name__})"}
    state.setdefault("epoch", 0)
    state.setdefault("attempts", 0)
    state.setdefault("start_epoch", 0)   # first epoch of the latest attempt
    state.setdefault("outcome", None)
    state.setdefault("error", "")
    state.setdefault("history", [])
    if "checkpoints" not in state:
        state["checkpoints"] = _unrecorded_checkpoints(trial_dir, state)
    return state


def _unrecorded_checkpoints(trial_dir: Location, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Checkpoint files without a recorded checksum (a store from before checksums, or a
    damaged state.json), newest first; the trainable checks that they load."""
    if "damaged" not in state:
        legacy = trial_dir / LEGACY_CHECKPOINT
        if state["epoch"] > 0 and storage.is_file(legacy):
            return [{"epoch": int(state["epoch"]), "file": LEGACY_CHECKPOINT, "sha256": None}]
        return []
    found = []
    for name in storage.names(trial_dir):
        match = _CHECKPOINT_FILE.fullmatch(name)
        if match:
            found.append({"epoch": int(match.group(1)), "file": name, "sha256": None})
    return sorted(found, key=lambda e: -e["epoch"])[:KEEP]


class TrialStore:
    """Reads and writes trials' checkpoints and progress under one folder."""

    def __init__(self, root: str | Location):
        self.root = storage.location(root)

    def trial_dir(self, trial_id: str) -> Location:
        return self.root / trial_id

    def state(self, trial_id: str) -> dict[str, Any]:
        return read_state(self.trial_dir(trial_id))

    def spec(self, trial_id: str) -> dict[str, Any] | None:
        """The trial's payload as stored at its first attempt (None if never stored)."""
        try:
            spec = json.loads(storage.read_text(self.trial_dir(trial_id) / SPEC_NAME))
        except (OSError, ValueError):
            return None
        return spec if isinstance(spec, dict) else None

    def trial_ids(self) -> list[str]:
        """Every trial this store holds anything of."""
        return [name for name, folder in storage.children(self.root)
                if folder and storage.exists(self.root / name / STATE_NAME)]

    def _write_state(self, trial_id: str, state: dict[str, Any]) -> None:
        state = {k: v for k, v in state.items() if k != "damaged"}
        state["epoch"] = state["checkpoints"][0]["epoch"] if state["checkpoints"] else 0
        storage.write_bytes(self.trial_dir(trial_id) / STATE_NAME,
                            json.dumps(state, allow_nan=True).encode())

    def _open_state(self, trial_id: str) -> dict[str, Any]:
        """The state to update; a damaged state.json is first set aside, never overwritten."""
        state = self.state(trial_id)
        if "damaged" in state:
            path = self.trial_dir(trial_id) / STATE_NAME
            storage.move_aside(path)
        return state

    def begin(self, trial_id: str, spec: dict[str, Any] | None = None,
              context: dict[str, Any] | None = None) -> dict[str, Any]:
        """Count one more attempt; return {attempt, epoch, checkpoint bytes or None}, plus
        `warning` (one line) when the latest checkpoint was damaged and `unverified` when the
        checkpoint has no checksum to check it by.

        `spec` (the trial's payload) is kept as trial.json; `context` describes the attempt
        (host, device, provenance) and is kept in the state.
        """
        state = self._open_state(trial_id)
        if spec is not None and self.spec(trial_id) is None:
            storage.write_bytes(self.trial_dir(trial_id) / SPEC_NAME,
                                json.dumps(spec, sort_keys=True).encode())
        start = self._select(trial_id, state)
        state["attempts"] += 1
        state["outcome"] = None
        state["error"] = ""
        state["start_epoch"] = start["epoch"] + 1
        if context:
            state["context"] = dict(context)
            state.setdefault("first_git_commit", context.get("git_commit", ""))
        self._write_state(trial_id, state)
        return {"attempt": state["attempts"], **start}

    def discard(self, trial_id: str, epoch: int, reason: str) -> dict[str, Any]:
        """The checkpoint of `epoch` would not load (an unverified one): set it aside and
        return where this attempt resumes instead, as begin() does (not a new attempt)."""
        state = self._open_state(trial_id)
        for entry in state["checkpoints"]:
            if entry["epoch"] == epoch:
                entry["problem"] = reason
        start = self._select(trial_id, state)
        state["start_epoch"] = start["epoch"] + 1
        self._write_state(trial_id, state)
        return {"attempt": state["attempts"], **start}

    def _select(self, trial_id: str, state: dict[str, Any]) -> dict[str, Any]:
        """The newest intact checkpoint; damaged ones are set aside and dropped from the
        state (which the caller writes)."""
        folder = self.trial_dir(trial_id)
        lost: list[tuple[int, str]] = []
        chosen, data = None, None
        for entry in state["checkpoints"]:
            problem = entry.pop("problem", None)
            path = folder / entry["file"]
            if problem is None:
                try:
                    data = storage.read_bytes(path)
                except OSError:
                    problem = "missing"
                else:
                    if entry["sha256"] is not None and sha256(data) != entry["sha256"]:
                        problem = f"damaged ({len(data)} bytes, checksum mismatch)"
            if problem is None:
                chosen = entry
                break
            lost.append((entry["epoch"], problem))
            if storage.exists(path):
                storage.move_aside(path)
        state["checkpoints"] = [e for e in state["checkpoints"]
                                if chosen is not None and e["epoch"] <= chosen["epoch"]]
        out: dict[str, Any] = {"epoch": chosen["epoch"] if chosen else 0,
                               "checkpoint": data if chosen else None}
        if chosen is not None and chosen["sha256"] is None:
            out["unverified"] = True
        if lost or "damaged" in state:
            out["warning"] = _lost_text(trial_id, lost, chosen, state.get("damaged"))
        return out

    def put(self, trial_id: str, epoch: int, data: bytes | None, metrics: dict[str, Any]) -> None:
        """Store the checkpoint written after `epoch` and that epoch's metrics.

        data None (a diverged epoch has no checkpoint of its own) records only the metrics.
        """
        state = self._open_state(trial_id)
        folder = self.trial_dir(trial_id)
        if data is not None:
            name = checkpoint_name(epoch)
            storage.write_bytes(folder / name, data)
            entry = {"epoch": int(epoch), "file": name, "sha256": sha256(data)}
            older = [e for e in state["checkpoints"] if e["epoch"] < int(epoch)]
            state["checkpoints"] = [entry] + older[:KEEP - 1]
        history = [m for m in state["history"] if int(m["epoch"]) != int(epoch)]
        state["history"] = sorted(history + [metrics], key=lambda m: int(m["epoch"]))
        self._write_state(trial_id, state)
        if data is not None:   # only once the state no longer names them
            self._drop_unnamed(trial_id, state)

    def _drop_unnamed(self, trial_id: str, state: dict[str, Any]) -> None:
        """Delete the checkpoints the (written) state no longer names."""
        folder = self.trial_dir(trial_id)
        kept = {e["file"] for e in state["checkpoints"]}
        for name in storage.names(folder):
            if name.startswith("checkpoint") and name.endswith(".pth.tar") and name not in kept:
                storage.remove(folder / name)

    def finish(self, trial_id: str, outcome: str, error: str = "") -> None:
        """Record the trial's outcome. A completed trial keeps only its final checkpoint
        (the one before it served only to resume past a damaged one)."""
        state = self._open_state(trial_id)
        state["outcome"] = outcome
        state["error"] = error
        retain = outcome == "completed" and len(state["checkpoints"]) > 1
        if retain:
            state["checkpoints"] = state["checkpoints"][:1]
        self._write_state(trial_id, state)
        if retain:
            self._drop_unnamed(trial_id, state)

    def outcome(self, trial_id: str) -> str | None:
        return self.state(trial_id)["outcome"]


def _lost_text(trial_id: str, lost: list[tuple[int, str]], chosen: dict[str, Any] | None,
               damaged_state: str | None) -> str:
    """One line: which checkpoint was unusable and what is trained again."""
    parts = [f"the checkpoint of epoch {e} is {problem}" for e, problem in lost]
    if damaged_state:
        parts.insert(0, f"{damaged_state}, set aside; its epoch history is lost here (the "
                        "Parquet rows keep it)")
    newest = max([e for e, _ in lost], default=chosen["epoch"] if chosen else 0)
    first = chosen["epoch"] + 1 if chosen is not None else 1
    redo = ("" if newest < first else f"; epoch {newest} is trained again" if newest == first
            else f"; epochs {first}-{newest} are trained again")
    if chosen is not None:
        resume = f"resuming from epoch {chosen['epoch']}'s checkpoint{redo}"
    else:
        resume = f"no intact checkpoint is left: training from epoch 1{redo}"
    return f"trial {trial_id}: {'; '.join(parts)}: {resume}"


def store_actor_class():
    """TrialStore as a Ray actor class (imports ray, so only call from a Ray driver)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(TrialStore)
