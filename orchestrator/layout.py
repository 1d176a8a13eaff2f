"""Where everything of an experiment lives under the results root, and the trial statuses.

The one definition of the results layout: every layer (planning, running, reporting, the
command line) asks an `ExperimentLayout` for its paths instead of spelling them out.
Vocabulary: the *results root* (`--results`, default `results/`) holds one *experiment
folder* per experiment, `<root>/<experiment>/`. A root is a local path or a URI
(`s3://bucket/r`): its paths are then `storage.UriPath`s, read and written through
`orchestrator/storage.py`. Plain Python, no torch or ray.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.storage import Location, location

# The status of a trial in trials.parquet.
STATUSES = ("pending", "running", "completed", "stopped", "diverged", "failed")
# Statuses a rerun of `onorm run` skips: the trial has its answer.
DONE_STATUSES = ("completed", "diverged")
# A search also skips what its scheduler stopped early: that is its answer for the point.
SEARCH_DONE_STATUSES = DONE_STATUSES + ("stopped",)
# Runs left out of tables and plots unless --include-running.
IN_PROGRESS_STATUSES = ("pending", "running", "failed")

METRICS_FILE = "metrics.parquet"
TRIALS_FILE = "trials.parquet"
# Tables across experiments, beside the experiment folders (no experiment name starts with _).
COMBINED_TABLES = "_tables"


def combined_table(results_root: str | Location, experiments: list[str] | tuple[str, ...],
                   metric: str, suffix: str) -> Location:
    """`onorm table A B`: <root>/_tables/A+B/<metric><suffix>."""
    return location(results_root) / COMBINED_TABLES / "+".join(experiments) / f"{metric}{suffix}"


@dataclass(frozen=True)
class ExperimentLayout:
    """The paths of one experiment folder (nothing is created by asking)."""

    dir: Location

    @classmethod
    def of(cls, results_root: str | Location, experiment: str) -> "ExperimentLayout":
        return cls(location(results_root) / experiment)

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def metrics(self) -> Location:
        """One row per (trial_id, epoch)."""
        return self.dir / METRICS_FILE

    @property
    def trials(self) -> Location:
        """One row per trial: status, best epoch, config, provenance."""
        return self.dir / TRIALS_FILE

    @property
    def resolved(self) -> Location:
        """The experiment as resolved, with every trial's config."""
        return self.dir / "experiment.yaml"

    @property
    def store(self) -> Location:
        """The trial store: each trial's checkpoint and per-epoch history."""
        return self.dir / "checkpoints"

    def trial_store(self, trial_id: str) -> Location:
        return self.store / trial_id

    @property
    def tables(self) -> Location:
        return self.dir / "tables"

    @property
    def plots(self) -> Location:
        return self.dir / "plots"

    @property
    def ray(self) -> Location:
        """Ray Tune's own logs, one folder per `onorm run`."""
        return self.dir / "ray"

    @property
    def lock(self) -> Location:
        """Held by the one process writing this folder; it names that process (pid, host,
        start time) while it runs, which `onorm status` reads."""
        return self.dir / ".lock"

    @property
    def tensorboard(self) -> Location:
        """TensorBoard event files, one run folder per trial (`tensorboard --logdir` this)."""
        return self.dir / "tensorboard"

    def tensorboard_run(self, run_name: str) -> Location:
        return self.tensorboard / run_name

    @property
    def mlflow(self) -> Location:
        """MLflow's file store for `--log mlflow` (unless MLFLOW_TRACKING_URI names another)."""
        return self.dir / "mlruns"

    @property
    def wandb(self) -> Location:
        """W&B's offline runs for `--log wandb` (`wandb sync` uploads them)."""
        return self.dir / "wandb"

    @property
    def tracker_notes(self) -> Location:
        """What each tracker has written of each trial (`<tracker>/<trial_id>.json`), so
        that a later run knows it without reading the tracker back."""
        return self.dir / "tracker-notes"

    def tracker_note(self, tracker: str, trial_id: str) -> Location:
        return self.tracker_notes / tracker / f"{trial_id}.json"

    def table(self, metric: str, suffix: str) -> Location:
        return self.tables / f"{metric}{suffix}"

    def plot(self, column: str, suffix: str = ".png") -> Location:
        return self.plots / f"{column}{suffix}"
