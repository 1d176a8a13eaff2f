"""Load and validate experiments.yaml: named experiments, each a kind (grid today) of trials.

The whole file is checked before anything starts, so a typo in one experiment is reported
even when another is run. Every error is a one-line UserError naming the experiment, the key
and what is allowed. New experiment kinds (e.g. `kind: tune`) plug in through
`register_kind`: a parser receives the common fields already checked and the raw mapping,
and returns an `Experiment`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from norms.modes import ALL_KIND_OPTIONS, KIND_OPTIONS, NORM_MODES, options_of
from orchestrator.plan.fields import (
    as_int,
    as_mapping,
    check_keys,
    parse_resources,
    parse_seeds,
    parse_settings,
    where,
)
from trainers.config import DATASETS
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
SYNTHETIC_KEYS = ("n_train", "n_test")
CELL_EXTRA_KEYS = ("seeds", "resources")


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
KIND_MODULES = ("orchestrator.plan.tune_kind",)


def register_kind(name: str, parser: KindParser, keys: dict[str, str]) -> None:
    """Add an experiment kind: `keys` are the top-level keys it accepts beyond COMMON_KEYS."""
    KINDS[name] = (parser, keys)


# ---------------------------------------------------------------- the grid kind

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
        check_cell_options(name, label, norm, options)
        seeds = parse_seeds(name, f"{label}.seeds", options.pop("seeds", 1))
        resources = common["resources"]
        if "resources" in options:
            resources = parse_resources(name, f"{label}.resources", options.pop("resources"),
                                        resources)
        cells.append(Cell(options={"norm": norm, **options}, seeds=seeds, resources=resources))
    return Experiment(name=name, kind="grid", cells=tuple(cells), **common)


def check_cell_options(exp: str, label: str, norm: str, options: dict[str, Any]) -> None:
    """A cell's normalizer options must be its kind's: `{norm: batch, afwd: 2/3}` would give
    a new trial id and retrain batch norm for nothing."""
    for key in options:
        if key in ALL_KIND_OPTIONS and key not in options_of(norm):
            takers = " and ".join(k for k, opts in KIND_OPTIONS.items() if key in opts)
            raise UserError(f"{where(exp, f'{label}.{key}')}: {key} applies only to norm "
                            f"{takers}, not to {norm}: remove it from this cell")


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


# Shipped inside the package (a link to the checkout's experiments.yaml), so that an
# installed onorm has the paper's experiments and the demo wherever it runs.
PACKAGED_CONFIG = Path(__file__).resolve().parent.parent / "experiments.yaml"


def default_config_path() -> Path:
    """./experiments.yaml if present, else the one shipped with the package."""
    local = Path("experiments.yaml")
    return local.absolute() if local.is_file() else PACKAGED_CONFIG


def load_experiments(path: str | Path | None = None) -> dict[str, Experiment]:
    """Every experiment of the file; relative data_dirs resolve against the file's folder
    (the packaged file's against the current folder, since its own is inside the install)."""
    import yaml  # local: keep `onorm --help` fast

    path = Path(path).absolute() if path else default_config_path()
    if not path.is_file():
        raise UserError(f"experiments file {str(path)!r} not found: pass --config FILE")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise UserError(f"experiments file {str(path)!r} is not valid YAML{at}: "
                        f"{getattr(err, 'problem', err)}") from None
    base_dir = Path.cwd() if path == PACKAGED_CONFIG else path.parent
    return parse_document(doc, base_dir)


def get_experiment(experiments: dict[str, Experiment], name: str) -> Experiment:
    if name not in experiments:
        raise UserError(f"unknown experiment {name!r}: available: "
                        f"{', '.join(sorted(experiments)) or '(none)'}")
    return experiments[name]
