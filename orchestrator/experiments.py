"""Load and validate experiments.yaml: named experiments, each a kind (grid today) of trials.

The whole file is checked before anything starts, so a typo in one experiment is reported
even when another is run. Every error is a one-line UserError naming the experiment, the key
and what is allowed. New experiment kinds (e.g. `kind: tune`) plug in through
`register_kind`: a parser receives the common fields already checked and the raw mapping,
and returns an `Experiment`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from trainers.config import DATASETS, NORM_MODES, config_fields
from trainers.decay import parse_fraction
from trainers.errors import UserError

# Keys every kind accepts; a kind lists the extra keys it understands.
COMMON_KEYS = {
    "kind": "experiment type (grid)",
    "description": "free text",
    "dataset": f"one of {', '.join(DATASETS)}",
    "data_dir": "dataset folder (relative to the yaml file's folder)",
    "synthetic": "{n_train, n_test}: write a small CIFAR-format dataset there if missing",
    "resources": "{cpu, gpu} per trial, fractions allowed",
    "max_failures": "retries of a crashed trial (default 2)",
    "max_concurrent": "at most this many trials at once (default: as resources allow)",
    "settings": "TrialConfig fields shared by every cell",
}
RESOURCE_KEYS = ("cpu", "gpu")
SYNTHETIC_KEYS = ("n_train", "n_test")
# Trial settings the experiment fixes itself (dataset, data_dir) or the cell list sets (norm, seed).
RESERVED_SETTINGS = ("dataset", "data_dir", "norm", "seed")
CELL_EXTRA_KEYS = ("seeds", "resources")
FLOAT_FIELDS = ("lr", "lr_multiplier", "momentum", "weight_decay", "afwd", "abkw")


@dataclass(frozen=True)
class Cell:
    """One normalizer setting of a grid: its options and the seeds to run it with."""

    options: dict[str, Any]
    seeds: tuple[int, ...]
    resources: dict[str, float]


@dataclass(frozen=True)
class Experiment:
    """A validated experiment: shared settings plus cells (grid) or a kind's own payload."""

    name: str
    kind: str
    dataset: str
    data_dir: str
    resources: dict[str, float]
    max_failures: int = 2
    max_concurrent: int | None = None
    synthetic: dict[str, int] | None = None
    description: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    cells: tuple[Cell, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)   # kind-specific, e.g. a tuning space
    raw: dict[str, Any] = field(default_factory=dict)     # as written, for experiment.yaml

    def to_dict(self) -> dict[str, Any]:
        """The resolved experiment, plain types only (written next to its results)."""
        return {
            "name": self.name, "kind": self.kind, "description": self.description,
            "dataset": self.dataset, "data_dir": self.data_dir, "synthetic": self.synthetic,
            "resources": self.resources, "max_failures": self.max_failures,
            "max_concurrent": self.max_concurrent, "settings": self.settings,
            "cells": [{"options": c.options, "seeds": list(c.seeds), "resources": c.resources}
                      for c in self.cells],
            "extra": self.extra,
        }


KindParser = Callable[[str, dict[str, Any], dict[str, Any]], Experiment]
KINDS: dict[str, tuple[KindParser, dict[str, str]]] = {}
# Modules that may register more kinds (e.g. `tune`) when imported; a missing one is skipped.
# They must stay light to import (no torch/ray at module level): --dry-run imports them.
KIND_MODULES = ("orchestrator.tune_experiment",)


def register_kind(name: str, parser: KindParser, keys: dict[str, str]) -> None:
    """Add an experiment kind: `keys` are the top-level keys it accepts beyond COMMON_KEYS."""
    KINDS[name] = (parser, keys)


# ---------------------------------------------------------------- scalar checks

def where(exp: str, key: str) -> str:
    return f"experiment {exp!r}, key {key!r}"


def as_int(exp: str, key: str, value: Any, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UserError(f"{where(exp, key)}: expected an integer >= {minimum}, got {value!r}")
    return value


def as_number(exp: str, key: str, value: Any) -> float:
    """A number or an exact fraction string such as "1023/1024" (never evaluated as code)."""
    if isinstance(value, bool):
        raise UserError(f"{where(exp, key)}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):   # YAML's .nan and .inf
            raise UserError(f"{where(exp, key)}: expected a finite number, got {value!r}")
        return float(value)
    if isinstance(value, str):
        try:
            return parse_fraction(value)
        except ValueError:
            pass
    raise UserError(f"{where(exp, key)}: expected a number or a fraction like \"1023/1024\", "
                    f"got {value!r}")


def as_mapping(exp: str, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where(exp, key)}: expected a mapping, got {type(value).__name__} "
                        f"{value!r}")
    return value


def check_keys(exp: str, context: str, raw: dict[str, Any], allowed: list[str] | tuple[str, ...]
               ) -> None:
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise UserError(f"experiment {exp!r}: unknown key {unknown[0]!r} in {context}; "
                        f"allowed: {', '.join(sorted(allowed))}")


def parse_resources(exp: str, key: str, raw: Any, base: dict[str, float] | None = None
                    ) -> dict[str, float]:
    raw = as_mapping(exp, key, raw)
    check_keys(exp, key, raw, RESOURCE_KEYS)
    out = dict(base or {"cpu": 1.0, "gpu": 0.0})
    for name, value in raw.items():
        number = as_number(exp, f"{key}.{name}", value)
        if not math.isfinite(number) or number < 0:
            raise UserError(f"{where(exp, key + '.' + name)}: must be >= 0, got {value!r}")
        if number > 1 and number != int(number):
            raise UserError(f"{where(exp, key + '.' + name)}: fractions are allowed only below 1 "
                            f"(several trials sharing one device); got {value!r}")
        out[name] = number
    if out["cpu"] <= 0 and out["gpu"] <= 0:
        raise UserError(f"{where(exp, key)}: a trial needs some cpu or gpu, got {raw!r}")
    return out


def parse_settings(exp: str, context: str, raw: dict[str, Any], extra_keys: tuple[str, ...] = ()
                   ) -> dict[str, Any]:
    """TrialConfig fields, type-checked here (TrialConfig checks their ranges)."""
    known = config_fields()
    allowed = [k for k in known if k not in RESERVED_SETTINGS] + list(extra_keys)
    check_keys(exp, context, raw, allowed)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in extra_keys:
            out[key] = value
            continue
        label = f"{context}.{key}" if context != "settings" else f"settings.{key}"
        ftype = str(known[key].type)
        if key in FLOAT_FIELDS:
            out[key] = as_number(exp, label, value)
        elif key == "lr_milestones":
            if not isinstance(value, list):
                raise UserError(f"{where(exp, label)}: expected a list of epochs, got {value!r}")
            out[key] = [as_int(exp, label, v, 1) for v in value]
        elif ftype.startswith("int"):
            out[key] = as_int(exp, label, value)
        elif ftype.startswith("bool"):
            if not isinstance(value, bool):
                raise UserError(f"{where(exp, label)}: expected true or false, got {value!r}")
            out[key] = value
        elif ftype.startswith("str"):
            if not isinstance(value, str):
                raise UserError(f"{where(exp, label)}: expected a string, got {value!r}")
            out[key] = value
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------- the grid kind

def parse_seeds(exp: str, key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, list):
        seeds = tuple(as_int(exp, key, s) for s in value)
        if not seeds or len(set(seeds)) != len(seeds):
            raise UserError(f"{where(exp, key)}: expected distinct seeds, got {value!r}")
        return seeds
    count = as_int(exp, key, value, 1)
    return tuple(range(count))


def parse_grid(name: str, common: dict[str, Any], raw: dict[str, Any]) -> Experiment:
    cells_raw = raw.get("cells")
    if cells_raw is None or cells_raw == []:
        raise UserError(f"experiment {name!r}: empty grid: add a `cells:` list with at least one "
                        f"normalizer, e.g. `- {{norm: batch, seeds: 1}}`")
    if not isinstance(cells_raw, list):
        raise UserError(f"{where(name, 'cells')}: expected a list of normalizer cells, "
                        f"got {cells_raw!r}")
    cells = []
    for i, cell_raw in enumerate(cells_raw):
        label = f"cells[{i}]"
        cell_raw = as_mapping(name, label, cell_raw)
        norm = cell_raw.get("norm")
        if norm not in NORM_MODES:
            raise UserError(f"{where(name, label + '.norm')}: unknown normalizer {norm!r}; "
                            f"choose one of {', '.join(NORM_MODES)}")
        options = parse_settings(name, label, {k: v for k, v in cell_raw.items() if k != "norm"},
                                 CELL_EXTRA_KEYS)
        seeds = parse_seeds(name, f"{label}.seeds", options.pop("seeds", 1))
        resources = common["resources"]
        if "resources" in options:
            resources = parse_resources(name, f"{label}.resources", options.pop("resources"),
                                        resources)
        cells.append(Cell(options={"norm": norm, **options}, seeds=seeds, resources=resources))
    return Experiment(name=name, kind="grid", cells=tuple(cells), **common)


register_kind("grid", parse_grid, {"cells": "list of normalizer cells: {norm, seeds, options}"})


# ---------------------------------------------------------------- the file

def parse_common(name: str, raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    dataset = raw.get("dataset")
    if dataset not in DATASETS:
        raise UserError(f"{where(name, 'dataset')}: expected one of {', '.join(DATASETS)}, "
                        f"got {dataset!r}")
    data_dir = raw.get("data_dir")
    if not isinstance(data_dir, str) or not data_dir:
        raise UserError(f"{where(name, 'data_dir')}: expected a folder path, got {data_dir!r}")
    synthetic = None
    if raw.get("synthetic") is not None:
        syn = as_mapping(name, "synthetic", raw["synthetic"])
        check_keys(name, "synthetic", syn, SYNTHETIC_KEYS)
        missing = [k for k in SYNTHETIC_KEYS if k not in syn]
        if missing:
            raise UserError(f"{where(name, 'synthetic')}: missing {', '.join(missing)}")
        synthetic = {k: as_int(name, f"synthetic.{k}", syn[k], 1) for k in SYNTHETIC_KEYS}
        if dataset == "imagenet":
            raise UserError(f"{where(name, 'synthetic')}: only CIFAR datasets can be synthesized")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{where(name, 'description')}: expected text, got {description!r}")
    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = as_int(name, "max_concurrent", max_concurrent, 1)
    settings = parse_settings(name, "settings", as_mapping(name, "settings",
                                                            raw.get("settings") or {}))
    return {
        "dataset": dataset,
        "data_dir": str((base_dir / Path(data_dir).expanduser()).resolve()),
        "synthetic": synthetic,
        "description": description,
        "resources": parse_resources(name, "resources", raw.get("resources") or {}),
        "max_failures": as_int(name, "max_failures", raw.get("max_failures", 2)),
        "max_concurrent": max_concurrent,
        "settings": settings,
        "raw": raw,
    }


def parse_experiment(name: str, raw: Any, base_dir: Path) -> Experiment:
    raw = as_mapping(name, "(experiment)", raw)
    kind = raw.get("kind", "grid")
    if kind not in KINDS:
        raise UserError(f"{where(name, 'kind')}: unknown kind {kind!r}; "
                        f"choose one of {', '.join(sorted(KINDS))}")
    parser, kind_keys = KINDS[kind]
    check_keys(name, "the experiment", raw, list(COMMON_KEYS) + list(kind_keys))
    return parser(name, parse_common(name, raw, base_dir), raw)


def load_kind_plugins() -> None:
    import importlib

    for name in KIND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise


def parse_document(doc: Any, base_dir: Path) -> dict[str, Experiment]:
    """Top-level mapping name -> experiment; names starting with '_' hold YAML anchors only."""
    load_kind_plugins()
    if not isinstance(doc, dict) or not doc:
        raise UserError("experiments file: expected a mapping of experiment names to "
                        "experiments, e.g. `demo: {dataset: cifar10, ...}`")
    out = {}
    for name, raw in doc.items():
        if not isinstance(name, str):
            raise UserError(f"experiments file: experiment names must be text, got {name!r}")
        if name.startswith("_"):
            continue
        out[name] = parse_experiment(name, raw, base_dir)
    return out


def default_config_path() -> Path:
    """./experiments.yaml if present, else the one shipped beside this package."""
    local = Path("experiments.yaml")
    if local.is_file():
        return local.resolve()
    return Path(__file__).resolve().parent.parent / "experiments.yaml"


def load_experiments(path: str | Path | None = None) -> dict[str, Experiment]:
    import yaml  # local: keep `onorm --help` fast

    path = Path(path) if path else default_config_path()
    if not path.is_file():
        raise UserError(f"experiments file {str(path)!r} not found: pass --config FILE")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise UserError(f"experiments file {str(path)!r} is not valid YAML{at}: "
                        f"{getattr(err, 'problem', err)}") from None
    return parse_document(doc, path.resolve().parent)


def get_experiment(experiments: dict[str, Experiment], name: str) -> Experiment:
    if name not in experiments:
        raise UserError(f"unknown experiment {name!r}: available: "
                        f"{', '.join(sorted(experiments)) or '(none)'}")
    return experiments[name]
