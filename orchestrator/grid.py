"""Expand an experiment into trials: resolved TrialConfigs with stable ids and resources.

trial_id = the first 12 hex digits of sha256 over the canonical JSON of every setting that
can change the results: the whole TrialConfig except where the data lives (`data_dir`) and
how the launcher runs it (`workers`, `device`), plus the synthetic dataset's shape when the
data is generated. Moving the data folder or changing the number of loader workers or the
device therefore keeps the id (and the recorded progress); changing any hyperparameter,
the seed or the normalizer options makes a new trial.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.experiments import Experiment
from trainers.config import TrialConfig, make_config
from trainers.decay import fraction_text

LAUNCH_ONLY_FIELDS = ("data_dir", "workers", "device")


@dataclass(frozen=True)
class TrialSpec:
    """One trial to run: its config, id, resources and (when generated) its dataset's shape."""

    trial_id: str
    config: TrialConfig
    resources: dict[str, float]
    synthetic: dict[str, int] | None = None

    def to_payload(self) -> dict[str, Any]:
        """Plain-typed form handed to the Ray trainable (which rebuilds the TrialConfig)."""
        return {"trial_id": self.trial_id, "config": self.config.to_dict(),
                "resources": dict(self.resources), "synthetic": self.synthetic}


def identity(config: TrialConfig, synthetic: dict[str, int] | None = None) -> dict[str, Any]:
    values = {k: v for k, v in config.to_dict().items() if k not in LAUNCH_ONLY_FIELDS}
    if synthetic:
        values["synthetic_data"] = dict(sorted(synthetic.items()))
    return values


def make_trial_id(config: TrialConfig, synthetic: dict[str, int] | None = None) -> str:
    canonical = json.dumps(identity(config, synthetic), sort_keys=True, separators=(",", ":"),
                           allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def make_trial(config: TrialConfig, resources: dict[str, float],
               synthetic: dict[str, int] | None = None, *, cpu_only: bool = False) -> TrialSpec:
    """cpu_only (`--cpu-only`): ask for no GPU but at least one CPU, and move a config pinned
    to a GPU onto the CPU; device is launch-only, so the trial id stays the same."""
    if cpu_only:
        resources = {"cpu": max(resources["cpu"], 1.0), "gpu": 0.0}
        if config.device.startswith("cuda"):
            config = config.replace(device="cpu")
    return TrialSpec(make_trial_id(config, synthetic), config, dict(resources), synthetic)


def expand(experiment: Experiment, *, data_dir: str | None = None, cpu_only: bool = False
           ) -> list[TrialSpec]:
    """One trial per (cell, seed), in file order; duplicate configs are kept once."""
    trials: list[TrialSpec] = []
    seen: set[str] = set()
    data_dir = data_folder(experiment, data_dir)
    for cell in experiment.cells:
        for seed in cell.seeds:
            values = {**experiment.settings, **cell.options, "seed": seed}
            config = make_config(experiment.dataset, data_dir, **values)
            trial = make_trial(config, cell.resources, experiment.synthetic, cpu_only=cpu_only)
            if trial.trial_id not in seen:
                seen.add(trial.trial_id)
                trials.append(trial)
    return trials


def data_folder(experiment: Experiment, data_dir: str | None = None) -> str:
    """The trials' data folder; a generated dataset gets a sub-folder named by its size,
    so changing the size in experiments.yaml never reuses data written for another size."""
    root = data_dir or experiment.data_dir
    if experiment.synthetic:
        s = experiment.synthetic
        return str(Path(root) / f"synthetic-{s['n_train']}-{s['n_test']}")
    return root


def describe_options(config: TrialConfig) -> str:
    """The normalizer's own options, e.g. 'afwd=1023/1024 abkw=127/128 ecm=ls'."""
    if config.norm == "online":
        return (f"afwd={fraction_text(config.afwd)} abkw={fraction_text(config.abkw)} "
                f"ecm={config.ecm}")
    if config.norm == "group":
        return f"groups={config.gn_num_groups}"
    return ""
