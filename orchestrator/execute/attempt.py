"""What one attempt of a trial needs, on one worker (trainable.py) or K (distributed_trial.py).

An attempt begins by counting itself in the trial store, which returns the latest intact
checkpoint; it sends every epoch's metrics and checkpoint to the store before Tune hears of
the epoch, so any epoch the driver recorded can be resumed from; and a UserError (bad input:
a dataset missing on this node, a checkpoint that does not match) is recorded in the store as
the trial's outcome, since it would fail the same way on every try. The store is reached
through the actor on the driver's node when the results are local, or directly when they are
on storage every node reaches (`StoreClient`). Each attempt records its own node's context
and provenance, not the driver's: a node may run another checkout.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.plan.trials import TrialSpec

STORE_NAMESPACE = "onorm"
RESUME_NAME = "resume.pth.tar"   # the checkpoint an attempt resumes from, in its scratch folder
# Test support only: a folder of plans for a worker to die as a lost one would
# (tests/orchestrator/orch_helpers.py's worker_dies); unset outside the tests.
WORKER_DEATHS_VAR = "ONORM_TEST_WORKER_DEATHS"


class StoreClient:
    """The trial store as this worker reaches it: `call("put", ...)` runs TrialStore's
    method in the driver's actor (params["store"] names it) or here, on the store's URI."""

    def __init__(self, params: dict[str, Any]):
        import ray

        self.actor = self.local = None
        if params.get("store"):
            self.actor = ray.get_actor(params["store"], namespace=STORE_NAMESPACE)
        else:
            from orchestrator.execute.store import TrialStore

            self.local = TrialStore(params["store_root"])

    def call(self, method: str, *args: Any) -> Any:
        if self.actor is not None:
            import ray

            return ray.get(getattr(self.actor, method).remote(*args))
        return getattr(self.local, method)(*args)


def begin(params: dict[str, Any]) -> tuple[StoreClient, dict[str, Any]]:
    """Count a new attempt of params["trial"] in the store, with this node's context; returns
    the store and the store's start ({attempt, epoch, checkpoint bytes, ...})."""
    store = StoreClient(params)
    payload = params["trial"]
    return store, store.call("begin", payload["trial_id"], payload, node_context())


def trial_spec(params: dict[str, Any]) -> TrialSpec:
    """The trial's spec rebuilt from its payload (a UserError if this node cannot build it:
    the trial then fails without a retry)."""
    return TrialSpec.from_payload(params["trial"])


def node_context() -> dict[str, Any]:
    """Where and by which code this process runs: the store keeps it with the attempt."""
    import ray

    from orchestrator.execute.provenance import provenance

    return {
        "host": socket.gethostname(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
        "pid": os.getpid(),
        "started_at": time.time(),
        **provenance(),
    }


def attempt_context(spec: TrialSpec, start: dict[str, Any]) -> dict[str, Any]:
    """What this attempt reports beside each epoch's metrics (copied into trials.parquet):
    the node's context, the device, and `warning`, the line about a damaged checkpoint it
    resumed past ("" when none)."""
    return {
        "trial_id": spec.trial_id,
        "attempt": start["attempt"],
        "start_epoch": start["epoch"] + 1,
        **node_context(),
        "device": device_name(spec.config),
        "trial_status": "running",
        "warning": start.get("warning") or "",
    }


def device_name(config) -> str:
    import torch

    if config.device != "cpu" and torch.cuda.is_available():
        # the float32 math the recipe chose for it (config.tf32), beside the GPU's name
        return f"{torch.cuda.get_device_name(0)} (tf32 {config.tf32})"
    return "cpu"


def ensure_synthetic_data(spec: TrialSpec) -> None:
    """Write the synthetic CIFAR-format dataset once per machine (the demo and tests)."""
    if not spec.synthetic:
        return
    from trainers.data.synthetic import ensure_synthetic_cifar

    ensure_synthetic_cifar(spec.config.data_dir, spec.config.dataset, spec.synthetic)


def scratch_folder(trial_id: str, role: str = "") -> Path:
    """A temporary folder of this attempt (its checkpoints, the one it resumes from); the
    name is what record_failure recognizes in an error message."""
    return Path(tempfile.mkdtemp(prefix=f"onorm-{trial_id}-{role}"))


def resume_point(store: StoreClient, trial_id: str, start: dict[str, Any], folder: Path
                 ) -> tuple[dict[str, Any], Path | None]:
    """(start, path of the checkpoint to resume from, written into `folder`, or None).

    A checkpoint the store has no checksum of (a store written before checksums) must load;
    one that does not is set aside in the store, which falls back to the one before.
    """
    from trainers.checkpoint import load_checkpoint
    from trainers.errors import UserError

    resume = folder / RESUME_NAME
    warnings = [start["warning"]] if start.get("warning") else []
    while start["checkpoint"] is not None:
        resume.write_bytes(start["checkpoint"])
        if not start.get("unverified"):
            break
        try:
            load_checkpoint(resume)
            break
        except UserError as err:
            start = store.call("discard", trial_id, start["epoch"],
                               getattr(err, "reason", "") or "unreadable")
            warnings += [start["warning"]] if start.get("warning") else []
    start = {**start, "warning": " ".join(warnings)}
    return start, resume if start["checkpoint"] is not None else None


def store_epoch(store: StoreClient, trial_id: str, metrics: dict[str, Any],
                checkpoint_path: Path | None) -> dict[str, Any]:
    """Send the epoch's metrics and checkpoint to the store (before Tune hears of the epoch,
    so every recorded epoch can be resumed from); returns the metrics as plain numbers."""
    epoch = int(metrics["epoch"])
    clean = {k: float(v) if k != "epoch" else epoch for k, v in metrics.items()}
    # A diverged epoch comes with the previous epoch's checkpoint (or none): not its own.
    finite = math.isfinite(clean["train_loss"]) and math.isfinite(clean["val_loss"])
    path = Path(checkpoint_path) if checkpoint_path else None
    data = path.read_bytes() if finite and path is not None and path.exists() else None
    store.call("put", trial_id, epoch, data, clean)
    return clean


def record_failure(store: StoreClient, trial_id: str, err: Exception,
                   params: dict[str, Any]) -> None:
    """A UserError ends the trial as failed, with its message, and is not retried; the
    attempt's temporary copy of the checkpoint is gone after this, so name the stored one."""
    from orchestrator.storage import location

    stored = str(location(params.get("store_root", "checkpoints")) / trial_id)
    temporary = re.compile(rf"\S*onorm-{trial_id}-[^/\s]*/{re.escape(RESUME_NAME)}")
    message = temporary.sub(lambda match: stored, " ".join(str(err).split()))
    store.call("finish", trial_id, "failed", message)


def exit_if_planned(trial_id: str, attempt: int, epoch: int) -> None:
    """Test support: exit like a lost worker, once, after the epoch of the trial's first
    attempt that a file named by its id in $ONORM_TEST_WORKER_DEATHS gives."""
    folder = os.environ.get(WORKER_DEATHS_VAR)
    if not folder or attempt != 1:
        return
    try:
        planned = int((Path(folder) / trial_id).read_text())
    except (OSError, ValueError):
        return
    if planned == epoch:
        os._exit(17)
