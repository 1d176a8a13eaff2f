"""The Ray Tune function trainable: one trial = the shared trainer, resumed from the store.

Runs in a Ray worker, possibly on another node. At every start (first try, a retry after
the worker died, or a new `onorm run` after the driver died) it asks the trial store for the
trial's latest intact checkpoint and resumes from it (execute/attempt.py). Each epoch the
trainer's checkpoint is sent to the store before the epoch is reported to Tune, so any epoch
the driver has recorded can be resumed from. Tune's own checkpoints are not used.

Bad input the trial finds (a UserError) fails the same way on every try, so it is recorded
in the store as the trial's outcome, `failed` with the message, and the trainable returns:
Tune does not retry it. Anything else (a dead worker, a lost node) is raised and retried up
to max_failures. A trial of several workers runs as a Ray Train job instead
(execute/distributed_trial.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from orchestrator.execute.attempt import (
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


def run_trial(params: dict[str, Any]) -> None:
    """Tune entry point; `params` = {trial: TrialSpec payload, store, store_root, experiment}."""
    from ray import tune

    from trainers.errors import UserError
    from trainers.train import train

    if int(params["trial"]["resources"].get("workers", 1)) > 1:
        from orchestrator.execute.distributed_trial import run_distributed

        return run_distributed(params)
    trial_id = params["trial"]["trial_id"]
    store, start = begin(params)
    model_dir = scratch_folder(trial_id)
    try:
        start, resume = resume_point(store, trial_id, start, model_dir)
        spec = trial_spec(params)
        ensure_synthetic_data(spec)
        context = attempt_context(spec, start)

        def report(metrics: dict[str, Any], checkpoint_path: Path) -> None:
            clean = store_epoch(store, trial_id, metrics, checkpoint_path)
            tune.report({**clean, **context})
            exit_if_planned(trial_id, start["attempt"], clean["epoch"])

        outcome = train(spec.config, report, model_dir=model_dir, resume=resume,
                        progress=False, print_freq=0, log=lambda line: print(line, flush=True))
        store.call("finish", trial_id, outcome.status)
    except UserError as err:
        record_failure(store, trial_id, err, params)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
