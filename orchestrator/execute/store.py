"""Each trial's latest checkpoint and progress, kept on the driver's machine.

Trials may run on nodes without a shared filesystem, so their checkpoints travel as bytes to
one store that lives beside the results: the experiment folder's `checkpoints/<trial_id>/` holds
`checkpoint.pth.tar` (the trainer's latest) and `state.json` (epoch of that checkpoint,
attempts, the trial's outcome once it returned, and every epoch's metrics). Both are
replaced atomically, the checkpoint before the state, so the state never points at an epoch
whose checkpoint is missing. This survives a SIGKILL of the driver: the next `onorm run`
resumes each trial from here. `CheckpointStore` is the plain-Python core; the Ray actor
wrapping it is made by `store_actor_class()` so this module never imports ray.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainers.atomic import write_bytes_durably

CHECKPOINT_NAME = "checkpoint.pth.tar"
STATE_NAME = "state.json"


def read_state(trial_dir: Path) -> dict[str, Any]:
    """The trial's state, or an empty one (epoch 0) when nothing was stored yet."""
    try:
        state = json.loads((trial_dir / STATE_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        state = {}
    state.setdefault("epoch", 0)
    state.setdefault("attempts", 0)
    state.setdefault("start_epoch", 0)   # first epoch of the latest attempt
    state.setdefault("outcome", None)
    state.setdefault("history", [])
    return state


class CheckpointStore:
    """Reads and writes trials' checkpoints and progress under one folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def trial_dir(self, trial_id: str) -> Path:
        return self.root / trial_id

    def state(self, trial_id: str) -> dict[str, Any]:
        return read_state(self.trial_dir(trial_id))

    def _write_state(self, trial_id: str, state: dict[str, Any]) -> None:
        write_bytes_durably(self.trial_dir(trial_id) / STATE_NAME,
                     json.dumps(state, allow_nan=True).encode())

    def begin(self, trial_id: str) -> dict[str, Any]:
        """Count one more attempt; return {attempt, epoch, checkpoint bytes or None}."""
        state = self.state(trial_id)
        path = self.trial_dir(trial_id) / CHECKPOINT_NAME
        data = path.read_bytes() if state["epoch"] > 0 and path.exists() else None
        state["attempts"] += 1
        state["outcome"] = None
        state["start_epoch"] = (state["epoch"] if data else 0) + 1
        self._write_state(trial_id, state)
        return {"attempt": state["attempts"], "epoch": state["start_epoch"] - 1,
                "checkpoint": data}

    def put(self, trial_id: str, epoch: int, data: bytes | None, metrics: dict[str, Any]) -> None:
        """Store the checkpoint written after `epoch` and that epoch's metrics.

        data None (a diverged epoch has no checkpoint of its own) records only the metrics.
        """
        state = self.state(trial_id)
        if data is not None:
            write_bytes_durably(self.trial_dir(trial_id) / CHECKPOINT_NAME, data)
            state["epoch"] = int(epoch)
        history = [m for m in state["history"] if int(m["epoch"]) != int(epoch)]
        state["history"] = sorted(history + [metrics], key=lambda m: int(m["epoch"]))
        self._write_state(trial_id, state)

    def finish(self, trial_id: str, outcome: str) -> None:
        state = self.state(trial_id)
        state["outcome"] = outcome
        self._write_state(trial_id, state)

    def outcome(self, trial_id: str) -> str | None:
        return self.state(trial_id)["outcome"]


def store_actor_class():
    """CheckpointStore as a Ray actor class (imports ray, so only call from a Ray driver)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(CheckpointStore)
