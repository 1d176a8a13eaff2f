"""A trial of K workers: the Tune trial launches a Ray Train TorchTrainer running the shared
trainer on every worker (the pattern Ray 2.60 documents for Train inside Tune).

The Tune trial only coordinates (it holds placement.COORDINATOR, no CPU: Ray Train places the K
workers with the per-worker cpu/gpu, which may then take every CPU of their nodes, on one
node unless `placement` says otherwise: execute/placement.py). It counts
the attempt in the trial store and hands every worker the latest checkpoint, so each rank
resumes from it. Each worker runs `train()` in the process
group Ray Train set up (NCCL on GPUs, gloo on CPUs); rank 0 sends every epoch's checkpoint and
metrics to the store, then all ranks report (Ray Train's report is a barrier) and Tune hears
rank 0's metrics. A worker that dies fails the Train run, hence the Tune trial, which Tune
retries from the store like a single-process trial; a rank's UserError (bad input) fails the
trial without a retry, as in a single-process trial.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.execute.attempt import (
    RESUME_NAME,
    StoreClient,
    attempt_context,
    begin,
    ensure_synthetic_data,
    exit_if_planned,
    record_failure,
    resume_point,
    scratch_folder,
    store_epoch,
    trial_spec,
)


def run_distributed(params: dict[str, Any]) -> None:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator.execute.placement import worker_strategy

    trial_id, res = params["trial"]["trial_id"], params["trial"]["resources"]
    store, start = begin(params)
    per_worker = {"CPU": res["cpu"], "GPU": res["gpu"]} if res["gpu"] else {"CPU": res["cpu"]}
    storage = Path(tempfile.mkdtemp(prefix=f"onorm-train-{trial_id}-"))
    scratch = scratch_folder(trial_id, "coordinator-")
    try:
        start, _ = resume_point(store, trial_id, start, scratch)
        checkpoint = start.pop("checkpoint")
        trainer = TorchTrainer(
            worker_loop,
            train_loop_config={"params": params, "start": start,
                               "checkpoint": ray.put(checkpoint) if checkpoint else None},
            scaling_config=ray.train.ScalingConfig(num_workers=int(res["workers"]),
                                                   use_gpu=res["gpu"] > 0,
                                                   resources_per_worker=per_worker,
                                                   placement_strategy=worker_strategy(res)),
            run_config=ray.train.RunConfig(
                name=f"{trial_id}-attempt{start['attempt']}", storage_path=str(storage),
                callbacks=[TuneReportCallback()],
                # a lost worker ends this attempt; Tune's retry resumes it from the store
                failure_config=ray.train.FailureConfig(max_failures=0)))
        try:
            trainer.fit()
        except Exception as err:
            # a rank's UserError fails every try alike: the trial fails, Tune does not retry
            failure = user_error_in(err)
            if failure is None:
                raise
            record_failure(store, trial_id, failure, params)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def user_error_in(err: BaseException):
    """The UserError behind a failed Train run (a rank's, in WorkerGroupError's
    worker_failures, or anywhere in the exception chain), or None."""
    from trainers.errors import UserError

    stack, seen = [err], set()
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, UserError):
            return error
        stack += [error.__cause__, error.__context__, getattr(error, "cause", None)]
        stack += list((getattr(error, "worker_failures", None) or {}).values())
    return None


def worker_loop(loop_config: dict[str, Any]) -> None:
    """One rank of the trial, inside Ray Train's process group."""
    import ray
    import ray.train

    from trainers.train import train

    params, start = loop_config["params"], loop_config["start"]
    trial_id = params["trial"]["trial_id"]
    rank = ray.train.get_context().get_world_rank()
    spec = trial_spec(params)
    ensure_synthetic_data(spec)
    store = StoreClient(params)
    context = attempt_context(spec, start)
    model_dir = scratch_folder(trial_id, f"rank{rank}-")
    resume = None
    if loop_config["checkpoint"] is not None:
        resume = model_dir / RESUME_NAME
        resume.write_bytes(ray.get(loop_config["checkpoint"]))

    def report(metrics: dict[str, Any], checkpoint_path: Path | None) -> None:
        if rank == 0:
            metrics = store_epoch(store, trial_id, metrics, checkpoint_path)
        ray.train.report({**metrics, **context, "epoch": int(metrics["epoch"])})
        if rank == 0:
            exit_if_planned(trial_id, start["attempt"], int(metrics["epoch"]))

    try:
        outcome = train(spec.config, report, model_dir=model_dir, resume=resume, progress=False,
                        print_freq=0, log=lambda line: print(line, flush=True))
        if rank == 0:
            store.call("finish", trial_id, outcome.status)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
