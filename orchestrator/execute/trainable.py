"""The Ray Tune function trainable: one trial = the shared trainer, resumed from the store.

Runs in a Ray worker, possibly on another node. At every start (first try, a retry after
the worker died, or a new `onorm run` after the driver died) it asks the checkpoint store
on the driver's node for the trial's latest checkpoint and resumes from it. Each epoch the
trainer's checkpoint is sent to the store before the epoch is reported to Tune, so any
epoch the driver has recorded can be resumed from. Tune's own checkpoints are not used.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

STORE_NAMESPACE = "onorm"


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
        return torch.cuda.get_device_name(0)
    return "cpu"


def attempt_context(trial_id: str, start: dict[str, Any], config) -> dict[str, Any]:
    """What this attempt reports beside each epoch's metrics (copied into trials.parquet)."""
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
    }


def store_epoch(store, trial_id: str, metrics: dict[str, Any],
                checkpoint_path: Path | None) -> dict[str, Any]:
    """Send the epoch's metrics and checkpoint to the store (before Tune hears of the epoch,
    so every recorded epoch can be resumed from); returns the metrics as plain numbers."""
    import ray

    epoch = int(metrics["epoch"])
    clean = {k: float(v) if k != "epoch" else epoch for k, v in metrics.items()}
    # A diverged epoch comes with the previous epoch's checkpoint (or none): not its own.
    finite = math.isfinite(clean["train_loss"]) and math.isfinite(clean["val_loss"])
    path = Path(checkpoint_path) if checkpoint_path else None
    data = path.read_bytes() if finite and path is not None and path.exists() else None
    ray.get(store.put.remote(trial_id, epoch, data, clean))
    return clean


def die_if_asked(hooks: dict[str, Any], attempt: int, epoch: int) -> None:
    """Test hook: die like a lost worker once, after the given epoch of the first attempt."""
    if attempt == 1 and hooks.get("exit_after_epoch") == epoch:
        os._exit(17)


def run_trial(params: dict[str, Any]) -> None:
    """Tune entry point; `params` = {trial: TrialSpec payload, store, experiment, hooks}.

    A trial of several workers runs as a Ray Train job (execute/distributed_trial.py)."""
    import ray
    from ray import tune

    from trainers.train import train

    payload = params["trial"]
    if int(payload["resources"].get("workers", 1)) > 1:
        from orchestrator.execute.distributed_trial import run_distributed

        return run_distributed(params)
    trial_id = payload["trial_id"]
    hooks = params.get("hooks") or {}
    config = config_from_dict(payload["config"])
    ensure_synthetic_data(config, payload.get("synthetic"))
    store = ray.get_actor(params["store"], namespace=STORE_NAMESPACE)
    start = ray.get(store.begin.remote(trial_id))
    context = attempt_context(trial_id, start, config)

    model_dir = Path(tempfile.mkdtemp(prefix=f"onorm-{trial_id}-"))
    resume = None
    if start["checkpoint"] is not None:
        resume = model_dir / "resume.pth.tar"
        resume.write_bytes(start["checkpoint"])

    def report(metrics: dict[str, Any], checkpoint_path: Path) -> None:
        clean = store_epoch(store, trial_id, metrics, checkpoint_path)
        tune.report({**clean, **context})
        die_if_asked(hooks, start["attempt"], clean["epoch"])

    try:
        outcome = train(config, report, model_dir=model_dir, resume=resume, progress=False,
                        print_freq=0, log=lambda line: print(line, flush=True))
        ray.get(store.finish.remote(trial_id, outcome.status))
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
