"""The Ray Tune function trainable: one trial = the shared trainer, resumed from the store.

Runs in a Ray worker, possibly on another node. At every start (first try, a retry after
the worker died, or a new `onorm run` after the driver died) it asks the trial store for the
trial's latest intact checkpoint and resumes from it. The store is reached through the
actor on the driver's node when the results are local, or directly when they are on
storage every node reaches (an object store): then ~200 MB checkpoints go straight from the
trial's node to the bucket instead of through the driver (`StoreClient`). Each
epoch the trainer's checkpoint is sent to the store before the epoch is reported to Tune, so
any epoch the driver has recorded can be resumed from. Tune's own checkpoints are not used.

Bad input the trial finds (a UserError: a dataset missing on this node, a checkpoint that
does not match) fails the same way on every try, so it is recorded in the store as the
trial's outcome, `failed` with the message, and the trainable returns: Tune does not retry
it. Anything else (a dead worker, a lost node) is raised and retried up to max_failures.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

STORE_NAMESPACE = "onorm"
RESUME_NAME = "resume.pth.tar"


def config_from_dict(values: dict[str, Any]):
    from trainers.config import TrialConfig

    values = dict(values)
    values["lr_milestones"] = tuple(values.get("lr_milestones", ()))
    return TrialConfig(**values)


def ensure_synthetic_data(config, synthetic: dict[str, int] | None) -> None:
    """Write the synthetic CIFAR-format dataset once per machine (the demo and tests)."""
    if not synthetic:
        return
    from trainers.data.synthetic import ensure_synthetic_cifar

    ensure_synthetic_cifar(config.data_dir, config.dataset, synthetic)


def device_name(config) -> str:
    import torch

    if config.device != "cpu" and torch.cuda.is_available():
        # the float32 math the recipe chose for it (config.tf32), beside the GPU's name
        return f"{torch.cuda.get_device_name(0)} (tf32 {config.tf32})"
    return "cpu"


def node_context(params: dict[str, Any]) -> dict[str, Any]:
    """Where and by which code this attempt runs; the store keeps it with the attempt."""
    import ray

    return {
        "host": socket.gethostname(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
        "pid": os.getpid(),
        "started_at": time.time(),
        **node_provenance(),
    }


def node_provenance() -> dict[str, str]:
    """The git commit and package versions of the code this node runs (each attempt's
    own, not the driver's: a node may run another checkout)."""
    from orchestrator.execute.provenance import provenance

    return provenance()


def attempt_context(trial_id: str, start: dict[str, Any], config) -> dict[str, Any]:
    """What this attempt reports beside each epoch's metrics (copied into trials.parquet);
    `warning` is the line about a damaged checkpoint it resumed past ("" when none)."""
    import ray

    return {
        "trial_id": trial_id,
        "attempt": start["attempt"],
        "start_epoch": start["epoch"] + 1,
        "host": socket.gethostname(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
        "pid": os.getpid(),
        "device": device_name(config),
        "started_at": time.time(),
        "trial_status": "running",
        "warning": start.get("warning") or "",
        **node_provenance(),
    }


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


def resume_point(store, trial_id: str, start: dict[str, Any], folder: Path
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


def record_failure(store, trial_id: str, err: Exception, params: dict[str, Any]) -> None:
    """A UserError ends the trial as failed, with its message, and is not retried; the
    worker's temporary copy of the checkpoint is gone after this, so name the stored one."""
    from orchestrator.storage import location

    stored = str(location(params.get("store_root", "checkpoints")) / trial_id)
    temporary = re.compile(rf"\S*onorm-{trial_id}-[^/\s]*/{re.escape(RESUME_NAME)}")
    message = temporary.sub(lambda match: stored, " ".join(str(err).split()))
    store.call("finish", trial_id, "failed", message)


def store_epoch(store, trial_id: str, metrics: dict[str, Any],
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


def die_if_asked(hooks: dict[str, Any], attempt: int, epoch: int, trial_id: str) -> None:
    """Test hook: die like a lost worker once, after the given epoch of the first attempt
    (of the listed trials only, when hooks has `trials`)."""
    if (attempt == 1 and hooks.get("exit_after_epoch") == epoch
            and trial_id in hooks.get("trials", [trial_id])):
        os._exit(17)


def run_trial(params: dict[str, Any]) -> None:
    """Tune entry point; `params` = {trial: TrialSpec payload, store, store_root, experiment,
    hooks}. Provenance is the node's own (node_provenance), not the driver's.

    A trial of several workers runs as a Ray Train job (execute/distributed_trial.py)."""
    from ray import tune

    from trainers.errors import UserError
    from trainers.train import train

    payload = params["trial"]
    if int(payload["resources"].get("workers", 1)) > 1:
        from orchestrator.execute.distributed_trial import run_distributed

        return run_distributed(params)
    trial_id = payload["trial_id"]
    hooks = params.get("hooks") or {}
    store = StoreClient(params)
    start = store.call("begin", trial_id, payload, node_context(params))
    model_dir = Path(tempfile.mkdtemp(prefix=f"onorm-{trial_id}-"))
    try:
        start, resume = resume_point(store, trial_id, start, model_dir)
        config = config_from_dict(payload["config"])
        ensure_synthetic_data(config, payload.get("synthetic"))
        context = attempt_context(trial_id, start, config)

        def report(metrics: dict[str, Any], checkpoint_path: Path) -> None:
            clean = store_epoch(store, trial_id, metrics, checkpoint_path)
            tune.report({**clean, **context})
            die_if_asked(hooks, start["attempt"], clean["epoch"], trial_id)

        outcome = train(config, report, model_dir=model_dir, resume=resume, progress=False,
                        print_freq=0, log=lambda line: print(line, flush=True))
        store.call("finish", trial_id, outcome.status)
    except UserError as err:
        record_failure(store, trial_id, err, params)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
