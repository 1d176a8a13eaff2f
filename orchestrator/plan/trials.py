"""Expand an experiment into trials: resolved TrialConfigs with stable ids and resources."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from norms.modes import options_of
from orchestrator.plan.experiments import Experiment
from orchestrator.plan.trial_id import make_trial_id
from trainers.config import TrialConfig, make_config
from trainers.decay import fraction_text
from trainers.errors import UserError


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

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "TrialSpec":
        """The spec back from to_payload() (in a Ray worker, or from the trial store)."""
        values = dict(payload["config"])
        values["lr_milestones"] = tuple(values.get("lr_milestones", ()))
        return cls(payload["trial_id"], TrialConfig(**values), dict(payload["resources"]),
                   payload.get("synthetic"))

    def recorded_config(self) -> dict[str, Any]:
        """The config as trials.parquet records it (config_json): with the data's shape."""
        return {**self.config.to_dict(), "synthetic_data": self.synthetic}


def make_trial(config: TrialConfig, resources: dict[str, float],
               synthetic: dict[str, int] | None = None, *, cpu_only: bool = False) -> TrialSpec:
    """cpu_only (`--cpu-only`): ask for no GPU but at least one CPU, and move a config pinned
    to a GPU onto the CPU; device is launch-only, so the trial id stays the same. So is the
    number of workers: a trial means the same on one or K of them."""
    workers = int(resources.get("workers", 1))
    if config.batch_size % workers:
        raise UserError(f"batch_size {config.batch_size} cannot be split evenly over "
                        f"resources.workers {workers}: the global batch must be a multiple "
                        f"of the worker count")
    if cpu_only:
        if config.image_decoder == "gpu":
            raise UserError("--cpu-only, but image_decoder gpu decodes on a CUDA device: drop "
                            "--cpu-only, or use image_decoder pil")
        resources = {**resources, "cpu": max(resources["cpu"], 1.0), "gpu": 0.0,
                     "workers": workers}
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
            try:
                trial = make_trial(config, cell.resources, experiment.synthetic,
                                   cpu_only=cpu_only)
            except UserError as err:
                raise UserError(f"experiment {experiment.name!r}: {err}") from None
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
    """The normalizer's own options, e.g. 'afwd=1023/1024 abkw=127/128 ecm=ls'; for a plugin
    named by its entry point, what it imports ('mypkg.layers:MyNorm')."""
    if config.norm_path and config.norm_path != config.norm:
        return config.norm_path
    parts = []
    for key in options_of(config.norm):
        value = getattr(config, key)
        parts.append(f"{key}={fraction_text(value) if key in ('afwd', 'abkw') else value}")
    return " ".join(parts)
