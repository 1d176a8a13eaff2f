"""Run a list of trials on Ray Tune and record them: the core of `onorm run` (and tuning).

`run_trials` starts or joins Ray, pins a trial-store actor to the driver's node (when
the results are local; on an object store each trial's node writes its store directly),
runs every trial that is not already done as a function trainable, and streams their
records into Parquet through a Tune callback in the driver. Each call builds a fresh Tuner
under a new storage folder: progress lives in the project's own store and Parquet files,
never in Tune's experiment state, so a SIGKILLed driver loses nothing. That folder is the
experiment folder's ray/<timestamp> for local results; for results on an object store it is
a local temporary folder (`tune_folder`), since nothing in it is needed to resume.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator import storage
from orchestrator.execute.attempt import STORE_NAMESPACE
from orchestrator.execute.live import LiveView
from orchestrator.execute.lock import experiment_lock
from orchestrator.execute.placement import check_resources, trial_bundle
from orchestrator.execute.preflight import check_nodes
from orchestrator.execute.provenance import provenance
from orchestrator.execute.recorder import Recorder
from orchestrator.execute.sigterm import take_sigterm_as_ctrl_c
from orchestrator.execute.trackers import Trackers
from orchestrator.layout import DONE_STATUSES, ExperimentLayout
from orchestrator.plan.trials import TrialSpec
from trainers.errors import UserError


@dataclass
class RunSummary:
    experiment: str
    counts: dict[str, int]
    layout: ExperimentLayout
    skipped: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.counts.get("failed") else 0


def cluster_address(address: str | None) -> str | None:
    """The Ray cluster to join: --address, else RAY_ADDRESS; None when Ray starts here."""
    return address or os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None) -> bool:
    """Join the cluster at `address`/RAY_ADDRESS or start a local Ray; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    quiet_ray_notices()
    address = cluster_address(address)
    common = dict(namespace=STORE_NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, ValueError, RuntimeError) as err:
            reason = " ".join(str(err).split())[:300]
            raise UserError(f"cannot join the Ray cluster at {address!r} as a node ({reason}): "
                            "onorm's driver must run on a node of the cluster: submit it from "
                            "here with `ray job submit --address http://HEAD:8265 -- onorm ...`"
                            " (docs/cluster.md), or leave out --address/RAY_ADDRESS to run "
                            "locally") from None
    else:
        # "local" always starts a new Ray: never attach to another local cluster by accident
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **common)
    take_sigterm_as_ctrl_c()   # ray.init installed its own SIGTERM handler, which exits at once
    return True


class _LeftOut(logging.Filter):
    """Drops a logger's records whose message starts with one of `prefixes`."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


# What Ray and Tune log that onorm says better, or that would mislead: per logger, the
# messages left out (everything else they log still shows).
LEFT_OUT = {
    # Ray now turns token authentication on by default (the project keeps it on:
    # docs/cluster.md) and says so on every run; its warning that a cluster runs *without* a
    # token still shows.
    "ray._private.authentication.authentication_token_setup": (
        "Token authentication is enabled",),
    # After a Ctrl-C, Tune points to Tuner.restore(...): onorm resumes by the same command,
    # and prints that; a failed trial is in onorm's own summary, not Tune's list of them.
    "ray.tune.tune": ("Experiment has been interrupted", "Training has been interrupted",
                      "Trials did not complete"),
}


def quiet_ray_notices() -> None:
    """Install the LEFT_OUT filters (once per logger)."""
    for name, prefixes in LEFT_OUT.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _LeftOut) for f in logger.filters):
            logger.addFilter(_LeftOut(*prefixes))


def start_store(checkpoint_dir: Path, name: str):
    """The trial-store actor, on the driver's node so its files sit beside the results."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from orchestrator.execute.store import store_actor_class

    node = ray.get_runtime_context().get_node_id()
    actor = store_actor_class().options(
        name=name, namespace=STORE_NAMESPACE, lifetime=None,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
    ).remote(str(checkpoint_dir))
    ray.get(actor.state.remote("warm-up"))  # fail here, not inside a trial, if it cannot start
    return actor


def quiet_tune_callbacks() -> list:
    """Stand-ins for two of Tune's default callbacks: its progress printer (which prints
    "Trial ... completed. Last result: ..." even at verbose=0, for a resumed trial that had
    nothing left to train) and its TensorBoard logger (split across resumes; the trackers
    write the experiment's own, from the record)."""
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.progress_reporter import TrialProgressCallback

    class Silent(TrialProgressCallback):
        def _print(self, msg: str) -> None:
            pass

    class NoTensorBoard(TBXLoggerCallback):
        def log_trial_start(self, trial) -> None:
            pass

        def log_trial_result(self, iteration, trial, result) -> None:
            pass

        def log_trial_end(self, trial, failed: bool = False) -> None:
            pass

    return [Silent(), NoTensorBoard()]


def make_callback(recorder: Recorder):
    from ray import tune

    def trial_key(trial) -> str:
        return trial.config["trial"]["trial_id"]

    class RecordCallback(tune.Callback):
        """Forwards Tune's trial events, in the driver, to the Parquet recorder."""

        def on_trial_start(self, iteration, trials, trial, **info):
            recorder.started(trial_key(trial))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "epoch" in result and "trial_id" in result:
                recorder.result(trial_key(trial), result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            recorder.finished(trial_key(trial))

        def on_trial_recover(self, iteration, trials, trial, **info):
            recorder.errored(trial_key(trial), error_text(trial), final=False)

        def on_trial_error(self, iteration, trials, trial, **info):
            recorder.errored(trial_key(trial), error_text(trial), final=True)

    return RecordCallback()


def error_text(trial) -> str:
    """The exception line of the trial's error file, and where the full traceback is."""
    path = trial.error_file
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    except (OSError, TypeError):
        return "trial failed (no error file)"
    # Ray's "actor died" messages run to a paragraph: their first sentence says enough.
    message = lines[-1] if lines else "trial failed"
    if len(message) > 300:
        message = message[:300].rsplit(" ", 1)[0] + " ..."
    # error_file is Ray's driver staging copy (under /tmp/ray, gone with the session); the
    # one to name is the copy Tune syncs into the experiment's ray/ folder
    name = getattr(trial.run_metadata, "error_filename", None)
    if getattr(trial, "path", None) and name:
        path = Path(trial.path, name).as_posix()
    return f"{message} (traceback: {path})"


def tune_folder(layout: ExperimentLayout) -> str:
    """Where Tune keeps its experiment state and the trials' error files.

    Local results: the experiment folder's ray/, as always. Results on an object store: a
    folder under the driver's temporary directory. Nothing in it is needed to resume (the
    trial store and the Parquet files are the record; each failure's message is in
    trials.parquet), and Tune on a URI would upload its experiment state every few seconds
    and have each trial sync its folder: requests and bytes for nothing onorm reads."""
    if storage.is_remote(layout.dir):
        import tempfile

        return str(Path(tempfile.gettempdir()) / "onorm-tune" / layout.name)
    return str(layout.ray)


def reconcile_folder(layout: ExperimentLayout, skip_statuses: tuple[str, ...]) -> None:
    """Make an experiment folder's Parquet files agree with its trial store (rebuilding a
    damaged one) without running anything: for readers that come before the first run of
    this process, such as the Optuna study's rebuild."""
    if not storage.is_dir(layout.dir):
        return
    with experiment_lock(layout.dir):
        Recorder(layout, [], provenance(), skip_statuses=skip_statuses)


def run_trials(experiment: str, trials: list[TrialSpec], results_root: str | storage.Location, *,
               address: str | None = None, max_concurrent: int | None = None,
               scheduler: Any = None, search_alg: Any = None, metric: str = "val_acc1",
               mode: str = "max", max_failures: int = 2,
               skip_statuses: tuple[str, ...] = DONE_STATUSES,
               live: LiveView | None = None,
               on_start: Callable[[], None] | None = None,
               log: tuple[str, ...] | list[str] = ()) -> RunSummary:
    """Run the trials that are not done yet; return the count of trials by final status.

    `scheduler`/`search_alg` are handed to Tune (e.g. ASHA for tuning; `metric`/`mode` then
    apply). Give schedulers `time_attr="epoch"`: a resumed trial's training_iteration restarts
    at 1 while its epoch does not. The param space is a grid over the trials' payloads, so a
    search_alg must accept grid_search (BasicVariantGenerator, or one wrapped in a
    ConcurrencyLimiter). A trial a scheduler ends early is recorded as 'stopped'. `on_start`
    runs once the run is sure to go ahead (after the cluster check), e.g. to write the
    resolved experiment.yaml: a refused run writes nothing. `log` names the optional
    trackers (mlflow, wandb) besides TensorBoard (execute/trackers.py).
    """
    layout = ExperimentLayout.of(storage.results_root(results_root), experiment)
    with experiment_lock(layout.dir):   # one writer per folder
        live = live or LiveView(experiment)
        live.started_at = time.time()   # elapsed: since the folder's lock (as onorm status)
        record = provenance()
        say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        recorder = Recorder(layout, trials, record, skip_statuses=skip_statuses,
                            on_change=live, say=say, trackers=Trackers(layout, log, say=say))
        summary = RunSummary(experiment, {}, layout,
                             skipped=[t.trial_id for t in recorder.skipped()])
        for spec in recorder.skipped():
            print(f"[{experiment}] skip {spec.trial_id} ({recorder.rows[spec.trial_id]['status']})",
                  file=sys.stderr)
        pending = recorder.pending()
        if not pending:
            if on_start is not None:
                on_start()
            try:
                recorder.sync_trackers()   # logs of a folder recorded before they existed
            finally:
                recorder.close_trackers()
            summary.counts = recorder.counts()
            return summary

        import ray
        from ray import tune

        started_ray = connect(address)
        try:
            joined = cluster_address(address) is not None
            check_resources(pending, joined, say=say)   # refused, or awaited on a cluster
            if joined:
                check_nodes(pending, say=say)   # every node's data and code (preflight.py)
            if on_start is not None:
                on_start()
            recorder.write(metrics=True)
            recorder.sync_trackers()
            # a store every node reaches is written by the trials' nodes themselves; a local
            # one through an actor on this node
            direct = storage.is_remote(layout.store)
            store_name = None if direct else f"store-{experiment}-{os.getpid()}-{time.time_ns()}"
            store = None if direct else start_store(layout.store, store_name)

            def resources(params: dict[str, Any]):
                return tune.PlacementGroupFactory([trial_bundle(params["trial"]["resources"])])

            from orchestrator.execute.trainable import run_trial

            tune_config = dict(max_concurrent_trials=max_concurrent, scheduler=scheduler,
                               search_alg=search_alg)
            if scheduler is not None or search_alg is not None:
                tune_config.update(metric=metric, mode=mode)
            tuner = tune.Tuner(
                tune.with_resources(run_trial, resources),
                param_space={"trial": tune.grid_search([t.to_payload() for t in pending]),
                             "store": store_name, "store_root": str(layout.store),
                             "experiment": experiment},
                tune_config=tune.TuneConfig(**tune_config),
                run_config=tune.RunConfig(
                    name=time.strftime("%Y%m%d-%H%M%S"), storage_path=tune_folder(layout),
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                    callbacks=[make_callback(recorder), *quiet_tune_callbacks()], verbose=0),
            )
            # Tune's legacy reporter at verbose=0 prints nothing; the live view shows progress.
            os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
            # Each failed attempt is shown as one line by the live view and its traceback kept
            # in the trial's error file; Tune would print every traceback on the screen too.
            logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
            live.start(recorder)
            try:
                tuner.fit()
            finally:
                try:
                    # Ctrl-C or an early exit: running trials go back to pending (and the
                    # view's last picture says so)
                    recorder.interrupted()
                finally:
                    live.stop(recorder)
                    if store is not None:
                        ray.kill(store)
            # Tune catches the first Ctrl-C itself and returns from fit() as if done; a trial left
            # unfinished tells it apart, and the CLI then says how to resume (exit 130).
            if any(recorder.rows[t.trial_id]["status"] == "pending" for t in pending):
                raise KeyboardInterrupt
        finally:
            recorder.close_trackers()
            if started_ray:
                ray.shutdown()
        summary.counts = recorder.counts()
        return summary
