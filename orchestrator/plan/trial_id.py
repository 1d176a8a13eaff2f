"""Trial ids: a short hash of what a trial computes, stable for as long as ids are recorded.

trial_id = the first 12 hex digits of sha256 over the canonical JSON of the trial's identity:
its TrialConfig without the launch-only fields (where the data lives, how the trial is
launched or how fast it runs: `launch_only` in trainers/config.py), plus the synthetic
dataset's shape when the data is generated.

An id, once recorded, never changes. The fields of FIRST_FIELDS were hashed when ids were
first recorded and stay hashed whatever their value; a field added since enters the identity
only when its value differs from its default. So adding a field leaves every recorded trial
as it was, and a trial that uses the new field is a new trial. (A new field therefore needs
one default for every dataset: a per-dataset default would enter the hash.)

A plugin normalizer (norms/plugins.py) is hashed by its import path, `norm_path`, in place of
its name: what runs is the class at that path, so `norm: mynorm` (an entry point naming
mypkg.layers:MyNorm) and `norm: mypkg.layers:MyNorm` are the same trial, and an entry point
moved to another class makes new trials. The built-ins have no path and keep their ids.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from typing import Any

from trainers.config import TrialConfig

FIRST_FIELDS = (
    "dataset", "arch", "depth", "epochs", "batch_size", "lr", "lr_milestones",
    "lr_multiplier", "momentum", "weight_decay", "norm", "afwd", "abkw", "ecm",
    "gn_num_groups", "norm_weight_decay", "seed", "pretrained", "synthetic_image_size",
)


def identity(config: TrialConfig, synthetic: dict[str, int] | None = None) -> dict[str, Any]:
    """The values the trial id hashes."""
    values: dict[str, Any] = {}
    for f in fields(config):
        if f.metadata.get("launch_only"):
            continue
        value = getattr(config, f.name)
        if f.name in FIRST_FIELDS or value != f.default:
            values[f.name] = list(value) if isinstance(value, tuple) else value
    if synthetic:
        values["synthetic_data"] = dict(sorted(synthetic.items()))
    return _by_path(values)


def _by_path(values: dict[str, Any]) -> dict[str, Any]:
    """A plugin's import path stands for its name (see the module docstring)."""
    path = values.pop("norm_path", "")
    if path:
        values["norm"] = path
    return values


def make_trial_id(config: TrialConfig, synthetic: dict[str, int] | None = None) -> str:
    canonical = json.dumps(identity(config, synthetic), sort_keys=True, separators=(",", ":"),
                           allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def setting_values(config: dict[str, Any], ignore: tuple[str, ...] = ("seed",)
                   ) -> dict[str, Any]:
    """What makes runs the same setting, from a recorded config (trials.parquet's
    config_json): the identity without `ignore` (by default the seed), by the same rules, so
    that a config recorded before a field existed matches one holding its default."""
    defaults = {f.name: f.default for f in fields(TrialConfig)}
    launch_only = {f.name for f in fields(TrialConfig) if f.metadata.get("launch_only")}
    values = {}
    for key, value in config.items():
        if key in launch_only or key in ignore:
            continue
        if key in FIRST_FIELDS or key not in defaults or value != _plain(defaults[key]):
            values[key] = value
    return _by_path(values)


def setting_key(config: dict[str, Any], ignore: tuple[str, ...] = ("seed",)) -> str:
    """setting_values as one comparable string."""
    return json.dumps(setting_values(config, ignore), sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
