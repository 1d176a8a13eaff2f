"""Load and validate experiments.yaml: named experiments, each a kind (grid today) of trials.

The file must parse as a whole (YAML, UTF-8, not nested absurdly deep); each experiment is
checked in full when it is asked for, so a typo in one never blocks running another. The
check covers everything the trials will need (every cell's resolved TrialConfig, the size of
the grid, the synthetic data's size), so nothing is refused after Ray has started. Every
error is a one-line UserError naming the experiment, the key path and what is allowed. New
experiment kinds (e.g. `kind: tune`) plug in through `register_kind`: a parser receives the
common fields already checked and the raw mapping, and returns an `Experiment`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from norms.modes import ALL_KIND_OPTIONS, KIND_OPTIONS, NORM_MODES, options_of
from norms.plugins import ENTRY_POINT_GROUP, PluginError, plugin_path
from orchestrator.plan.fields import (
    MAX_TRIALS,
    as_int,
    as_mapping,
    check_keys,
    parse_resources,
    parse_seeds,
    parse_settings,
    too_many_trials,
    where,
)
from orchestrator.plan.overrides import apply_sets
from orchestrator.plan.yaml_file import read_yaml
from trainers.config import DATASETS, ConfigError, config_specs, make_config
from trainers.errors import UserError

# Keys every kind accepts; a kind lists the extra keys it understands.
COMMON_KEYS = {
    "kind": "experiment type (grid)",
    "description": "free text",
    "dataset": f"one of {', '.join(DATASETS)}",
    "data_dir": "dataset folder (relative to the yaml file's folder)",
    "synthetic": "{n_train, n_test}: write a small CIFAR-format dataset there if missing",
    "resources": "{cpu, gpu} per trial, fractions allowed",
    "max_failures": "retries of a crashed trial (default 2; -1: no limit)",
    "max_concurrent": "at most this many trials at once (default: as resources allow)",
    "settings": "TrialConfig fields shared by every cell",
}
SYNTHETIC_KEYS = ("n_train", "n_test")
# A generated dataset lives in memory whole (3 KB an image): twice CIFAR's 50,000 is plenty
# for tests and demos, and 10**15 is refused here rather than by a MemoryError in a trial.
MAX_SYNTHETIC_IMAGES = 100_000
MAX_FAILURES = 1000
CELL_EXTRA_KEYS = ("seeds", "resources")
# Experiment names become folder names under the results root.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


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
    overrides: tuple[str, ...] = ()                       # the --set KEY=VALUE applied to raw

    def to_dict(self) -> dict[str, Any]:
        """The resolved experiment, plain types only (written next to its results)."""
        return {
            "name": self.name, "kind": self.kind, "description": self.description,
            "dataset": self.dataset, "data_dir": self.data_dir, "synthetic": self.synthetic,
            "resources": self.resources, "max_failures": self.max_failures,
            "max_concurrent": self.max_concurrent, "settings": self.settings,
            "cells": [{"options": c.options, "seeds": list(c.seeds), "resources": c.resources}
                      for c in self.cells],
            "extra": self.extra, "overrides": list(self.overrides),
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
        raise UserError(f"{where(name, 'cells')}: empty grid: add a `cells:` list with at least "
                        "one normalizer, e.g. `- {norm: batch, seeds: 1}`")
    if not isinstance(cells_raw, list):
        raise UserError(f"{where(name, 'cells')}: expected a list of normalizer cells, "
                        f"got {cells_raw!r}")
    cells = []
    for i, cell_raw in enumerate(cells_raw):
        label = f"cells[{i}]"
        cell_raw = as_mapping(name, label, cell_raw)
        norm = cell_raw.get("norm")
        check_norm_name(name, label + ".norm", norm)
        options = parse_settings(name, label, {k: v for k, v in cell_raw.items() if k != "norm"},
                                 CELL_EXTRA_KEYS)
        check_cell_options(name, label, norm, options)
        seeds = parse_seeds(name, f"{label}.seeds", options.pop("seeds", 1))
        resources = common["resources"]
        if "resources" in options:
            resources = parse_resources(name, f"{label}.resources", options.pop("resources"),
                                        resources)
        cell = Cell(options={"norm": norm, **options}, seeds=seeds, resources=resources)
        check_trial_config(name, common, {**common["settings"], **cell.options,
                                          "seed": max(seeds)},
                           cell_key_path(label, cell.options, common["settings"]))
        cells.append(cell)
    total = sum(len(c.seeds) for c in cells)
    if total > MAX_TRIALS:
        raise UserError(too_many_trials(name, "cells", total))
    return Experiment(name=name, kind="grid", cells=tuple(cells), **common)


def check_norm_name(exp: str, key: str, norm: Any) -> None:
    """A built-in normalizer, or a plugin's name or module:Class path that resolves to an
    installed module (nothing is imported here)."""
    if isinstance(norm, str) and norm in NORM_MODES:
        return
    if not isinstance(norm, str) or not norm:
        raise UserError(f"{where(exp, key)}: unknown normalizer {norm!r}; choose one of "
                        f"{', '.join(NORM_MODES)}, or a plugin (an {ENTRY_POINT_GROUP} entry "
                        "point's name, or module:Class)")
    try:
        plugin_path(norm)
    except PluginError as err:
        raise UserError(f"{where(exp, key)}: {err}") from None


def cell_key_path(label: str, options: dict[str, Any], settings: dict[str, Any]
                  ) -> Callable[[str], str]:
    """Where a cell's trial setting was written: the cell, the shared settings, or (a
    default at fault) the cell as a whole."""
    def key_of(setting: str) -> str:
        if setting in options:
            return f"{label}.{setting}"
        return f"settings.{setting}" if setting in settings else label
    return key_of


def setting_key_path(experiment: Experiment, setting: str, value: Any = None) -> str:
    """Where a trial setting (of the value, when given) is written in an experiment: the
    first cell that sets it, else the shared settings."""
    for i, cell in enumerate(experiment.cells):
        if setting in cell.options and (value is None or cell.options[setting] == value):
            return f"cells[{i}].{setting}"
    return f"settings.{setting}" if setting in experiment.settings else "settings"


def check_trial_config(exp: str, common: dict[str, Any], values: dict[str, Any],
                       key_of: Callable[[str], str]) -> None:
    """The TrialConfig one trial would have, checked as the trainer will check it (the
    checks between fields too: depth 6n+2, the group count dividing every layer), and
    against the synthetic dataset's size; `key_of(field)` is the key path that set it."""
    try:
        config = make_config(common["dataset"], common["data_dir"], **values)
    except ConfigError as err:
        raise UserError(f"{where(exp, key_of(err.field))}: {err}") from None
    synthetic = common["synthetic"]
    if synthetic and config.batch_size > synthetic["n_train"]:
        raise UserError(f"{where(exp, key_of('batch_size'))}: batch_size {config.batch_size} "
                        f"is larger than the {synthetic['n_train']} synthetic training images: "
                        "lower batch_size or raise synthetic.n_train")


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
    if not isinstance(data_dir, str) or not data_dir or "\0" in data_dir:
        raise UserError(f"{where(name, 'data_dir')}: expected a folder path, got {data_dir!r}")
    synthetic = None
    if raw.get("synthetic") is not None:
        syn = as_mapping(name, "synthetic", raw["synthetic"])
        check_keys(name, "synthetic", syn, SYNTHETIC_KEYS)
        missing = [k for k in SYNTHETIC_KEYS if k not in syn]
        if missing:
            raise UserError(f"{where(name, 'synthetic')}: missing {', '.join(missing)}")
        synthetic = {k: as_int(name, f"synthetic.{k}", syn[k], 1, MAX_SYNTHETIC_IMAGES)
                     for k in SYNTHETIC_KEYS}
        if dataset == "imagenet":
            raise UserError(f"{where(name, 'synthetic')}: only CIFAR datasets can be synthesized")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{where(name, 'description')}: expected text, got {description!r}")
    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = as_int(name, "max_concurrent", max_concurrent, 1, MAX_TRIALS)
    settings = parse_settings(name, "settings", as_mapping(name, "settings",
                                                            raw.get("settings") or {}))
    return {
        "dataset": dataset,
        "data_dir": str((base_dir / Path(data_dir).expanduser()).resolve()),
        "synthetic": synthetic,
        "description": description,
        "resources": parse_resources(name, "resources", raw.get("resources") or {}),
        # -1: retry without limit (spot nodes preempted any number of times)
        "max_failures": as_int(name, "max_failures", raw.get("max_failures", 2), -1,
                               MAX_FAILURES),
        "max_concurrent": max_concurrent,
        "settings": settings,
        "raw": raw,
    }


def parse_experiment(name: str, raw: Any, base_dir: Path) -> Experiment:
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"experiment {name!r}: a name must be a folder name of letters, digits, "
                        "'_', '.' and '-' (not starting with one of the last three), up to "
                        "100 characters: rename it in the experiments file")
    raw = as_mapping(name, "(experiment)", raw)
    kind = raw.get("kind", "grid")
    if not isinstance(kind, str) or kind not in KINDS:
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


class Experiments(Mapping):
    """The experiments of one file by name, each checked in full when first asked for: an
    error in one is reported when it is run, and never blocks running another."""

    def __init__(self, raw: dict[str, Any], base_dir: Path):
        self._raw, self._base_dir = raw, base_dir
        self._parsed: dict[str, Experiment] = {}

    def __getitem__(self, name: str) -> Experiment:
        if name not in self._parsed:
            self._parsed[name] = parse_experiment(name, self._raw[name], self._base_dir)
        return self._parsed[name]

    def with_overrides(self, name: str, sets: Sequence[str]) -> Experiment:
        """Experiment `name` with every `--set KEY=VALUE` applied to it as written, then
        checked in full like the file (plan/overrides.py); an error in a value a --set gave
        names that --set too."""
        if not sets:
            return self[name]
        raw, changed = apply_sets(name, as_mapping(name, "(experiment)", self._raw[name]), sets)
        try:
            experiment = parse_experiment(name, raw, self._base_dir)
        except UserError as err:
            raise UserError(_blame(str(err), changed)) from None
        return dataclasses.replace(experiment, overrides=tuple(sets))

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def _blame(message: str, changed: list[tuple[str, str]]) -> str:
    """`message` with the --set that wrote the key it names (or a key under or above it)."""
    unknown = re.search(r"unknown key '([^']+)' in (the experiment|[^;]+);", message)
    if unknown:
        name, context = unknown.groups()
        if context == "the experiment" and name in config_specs():   # --set epochs=2
            return (f"{message}; a trial setting goes under settings: --set "
                    f"settings.{name}=... (or cells.NORM.{name}=... for one normalizer's cells)")
        key = name if context == "the experiment" else f"{context}.{name}"
    else:
        match = re.search(r"key '([^']+)'", message)
        key = match.group(1) if match else ""
    for path, text in changed:
        if key and (key == path or key.startswith((path + ".", path + "["))
                    or path.startswith((key + ".", key + "["))):
            return f"{message} (set by --set {text})"
    return message


def parse_document(doc: Any, base_dir: Path, source: str = "experiments file") -> Experiments:
    """Top-level mapping name -> experiment; names starting with '_' hold YAML anchors only."""
    load_kind_plugins()
    if not isinstance(doc, dict) or not doc:
        raise UserError(f"{source}: expected a mapping of experiment names to experiments, "
                        "e.g. `demo: {dataset: cifar10, ...}`")
    for name in doc:
        if not isinstance(name, str):
            raise UserError(f"{source}: experiment names must be text, got {name!r}")
    return Experiments({n: raw for n, raw in doc.items() if not n.startswith("_")}, base_dir)


# Shipped inside the package (a link to the checkout's experiments.yaml), so that an
# installed onorm has the paper's experiments and the demo wherever it runs.
PACKAGED_CONFIG = Path(__file__).resolve().parent.parent / "experiments.yaml"


def default_config_path() -> Path:
    """./experiments.yaml if present, else the one shipped with the package."""
    local = Path("experiments.yaml")
    return local.absolute() if local.is_file() else PACKAGED_CONFIG


def load_experiments(path: str | Path | None = None) -> Experiments:
    """Every experiment of the file; relative data_dirs resolve against the file's folder
    (the packaged file's against the current folder, since its own is inside the install)."""
    path = Path(path).absolute() if path else default_config_path()
    doc = read_yaml(path)
    base_dir = Path.cwd() if path == PACKAGED_CONFIG else path.parent
    return parse_document(doc, base_dir, f"experiments file {str(path)!r}")


def get_experiment(experiments: Mapping[str, Experiment], name: str) -> Experiment:
    if name not in experiments:
        raise UserError(f"unknown experiment {name!r}: available: "
                        f"{', '.join(sorted(experiments)) or '(none)'}")
    return experiments[name]
