"""`--set KEY=VALUE` and `--only FILTER`: an experiment changed, or narrowed, on the command line.

--set edits the experiment's mapping as written in experiments.yaml, before it is checked,
so a value from the command line passes exactly the checks of the file and a bad one is the
same one-line error naming the key. KEY is a path into the experiment:
    settings.KEY, resources.KEY, synthetic.KEY, max_failures, ...  any key of the file
    cells[i].KEY      the i-th cell, from 0 (cells[N], N the number of cells, appends one)
    cells.NORM.KEY    every cell of normalizer NORM (cells.online.seeds)
    space.afwd.dyadic, num_samples, scheduler.grace_period, ...    a tune experiment's keys
A mapping missing on the way is created (settings.lr where the experiment has no settings).
VALUE is YAML, read by the file's own safe loader: 10, 0.05, 1023/1024, true, [50, 75],
null, {norm: batch, seeds: 1}. The changes go into the trial configs, hence their ids.

--only narrows the trials to run or list: comma-separated KEY=VALUE terms that must all
match, KEY being norm, seed, trial_id or any trial setting (epochs, afwd, lr_milestones...)
and VALUE read as that setting (afwd=1023/1024, lr_milestones=[3]); given several times, a
trial that matches any of them. A filter that selects nothing is an error.

Plain Python: no torch, no ray.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from orchestrator.plan.yaml_file import depth_limited_loader
from trainers.config import SettingError, config_specs, parse_setting
from trainers.errors import UserError

_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
KEY_PATH = re.compile(rf"{_NAME}(?:\.{_NAME}|\[[0-9]+\])*")
_STEP = re.compile(rf"\.?({_NAME})|\[([0-9]+)\]")
SHOWN_VALUES = 8   # values listed when a filter selects nothing


def read_value(text: str) -> Any:
    """A command-line value as YAML, through the experiments file's own loader."""
    import yaml

    if not text.strip():
        return None
    try:
        return yaml.load(text, Loader=depth_limited_loader())
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{text!r} is not a YAML value ({problem}); quote it") from None


def split_assignment(flag: str, text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        example = "settings.epochs=10" if flag == "--set" else "norm=online,seed=0"
        raise UserError(f"{flag} {text!r}: expected KEY=VALUE, e.g. {flag} {example}")
    return key.strip(), value.strip()


# ---------------------------------------------------------------- --set

def apply_sets(exp: str, raw: dict[str, Any], sets: Sequence[str]
               ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """(a copy of the experiment's mapping with every --set applied, in order; and for each
    key path it changed, e.g. 'cells[0].seeds', the --set that changed it)."""
    raw = _copy(raw)
    changed: list[tuple[str, str]] = []
    for text in sets:
        key, value_text = split_assignment("--set", text)
        context = f"experiment {exp!r}, --set {text}"
        try:
            value = read_value(value_text)
        except ValueError as err:
            raise UserError(f"{context}: {err}") from None
        for path in _paths(context, key, raw):
            _assign(context, raw, path, _copy(value))
            changed.append((_path_text(path), text))
    return raw, changed


def _copy(value: Any) -> Any:
    """A copy sharing nothing (YAML aliases share objects, and a cell's edit must not leak)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _paths(context: str, key: str, raw: dict[str, Any]) -> list[list[str | int]]:
    """The key paths KEY names: one, or one per cell of the normalizer cells.NORM names."""
    if key.startswith("cells.") and isinstance(raw.get("cells"), list):
        rest = key[len("cells."):]
        cells = raw["cells"]
        norms = {c.get("norm") for c in cells if isinstance(c, dict)}
        # longest first: a plugin's module:Class path has dots of its own
        for norm in sorted((n for n in norms if isinstance(n, str)), key=len, reverse=True):
            if rest == norm or rest.startswith(norm + "."):
                tail = _steps(context, rest[len(norm) + 1:]) if rest != norm else []
                return [["cells", i, *tail] for i, c in enumerate(cells)
                        if isinstance(c, dict) and c.get("norm") == norm]
        shown = ", ".join(str(n) for n in sorted(norms, key=str))
        raise UserError(f"{context}: no cell has norm {rest.split('.')[0]!r} (the cells' "
                        f"norms: {shown}); name a cell as cells.NORM.KEY or cells[i].KEY")
    return [_steps(context, key)]


def _steps(context: str, key: str) -> list[str | int]:
    if not KEY_PATH.fullmatch(key):
        raise UserError(f"{context}: {key!r} is not a key path: write keys with dots and list "
                        "items as [i], e.g. settings.epochs, cells[0].seeds, cells.online.afwd")
    return [m.group(1) if m.group(1) else int(m.group(2)) for m in _STEP.finditer(key)]


def _path_text(path: list[str | int]) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text


def _assign(context: str, root: dict[str, Any], path: list[str | int], value: Any) -> None:
    node: Any = root
    for depth, step in enumerate(path):
        last = depth == len(path) - 1
        where = _path_text(path[:depth]) or "the experiment"
        if isinstance(step, int):
            if not isinstance(node, list):
                raise UserError(f"{context}: {where} is {_kind(node)}, not a list")
            if step > len(node) or (step == len(node) and not last):
                raise UserError(f"{context}: {where} has {len(node)} items: index {step} is "
                                f"out of range ({where}[{len(node)}] appends one)")
            if last:
                node[step:step + 1] = [value]   # == len(node): appended
                return
            node = node[step]
            continue
        if not isinstance(node, dict):
            raise UserError(f"{context}: {where} is {_kind(node)}, not a mapping")
        if last:
            node[step] = value
            return
        if node.get(step) is None:
            node[step] = [] if isinstance(path[depth + 1], int) else {}
        node = node[step]


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list"}.get(type(value), f"the value {value!r}")


# ---------------------------------------------------------------- --only

FILTER_KEYS = ("trial_id",)   # besides the trial settings


@dataclass(frozen=True)
class TrialFilter:
    """One --only: every term must match."""

    text: str
    terms: tuple[tuple[str, Any], ...]

    def matches(self, trial) -> bool:
        return all(_matches(trial, key, value) for key, value in self.terms)


def parse_only(text: str) -> TrialFilter:
    specs = config_specs()
    allowed = [k for k, s in specs.items() if not s.derived] + list(FILTER_KEYS)
    terms = []
    for term in _split_terms(text):
        key, value_text = split_assignment("--only", term)
        if key not in allowed:
            raise UserError(f"--only {text}: unknown key {key!r}; filter on norm, seed, "
                            f"trial_id or a trial setting ({', '.join(sorted(allowed))})")
        try:
            value = read_value(value_text)
        except ValueError as err:
            raise UserError(f"--only {text}: {err}") from None
        if key in ("trial_id", "norm", "data_dir"):
            value = str(value)
        else:
            try:
                value = parse_setting(key, value)
            except SettingError as err:
                raise UserError(f"--only {text}: {key} expects {err}, got "
                                f"{value_text!r}") from None
        terms.append((key, value))
    return TrialFilter(text, tuple(terms))


def _split_terms(text: str) -> list[str]:
    """Comma-separated, but not inside [...] or {...} (lr_milestones=[100,150])."""
    terms, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth <= 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    return [t for t in terms + [current] if t.strip()]


def _matches(trial, key: str, value: Any) -> bool:
    if key == "trial_id":
        return trial.trial_id == value
    actual = getattr(trial.config, key)
    if key == "norm":   # a plugin by its name or its import path
        return value in (actual, trial.config.norm_path)
    if isinstance(actual, float) and isinstance(value, float):
        return math.isclose(actual, value, rel_tol=1e-12, abs_tol=1e-15)
    return actual == value


def select(exp: str, trials: list, filters: Sequence[TrialFilter]) -> list:
    """The trials that match any filter (all without filters); a filter that selects none is
    an error listing the values the experiment's trials have for its keys."""
    if not filters:
        return trials
    for f in filters:
        if not any(f.matches(t) for t in trials):
            keys = dict.fromkeys(k for k, _ in f.terms)
            have = "; ".join(f"{k}: {_values(trials, k)}" for k in keys)
            raise UserError(f"experiment {exp!r}: --only {f.text} selects none of its "
                            f"{len(trials)} trials ({have})")
    return [t for t in trials if any(f.matches(t) for f in filters)]


def _values(trials: list, key: str) -> str:
    seen = list(dict.fromkeys(
        t.trial_id if key == "trial_id" else _shown(getattr(t.config, key)) for t in trials))
    more = f", ... ({len(seen)} values)" if len(seen) > SHOWN_VALUES else ""
    return ", ".join(seen[:SHOWN_VALUES]) + more


def _shown(value: Any) -> str:
    from trainers.decay import fraction_text

    if isinstance(value, float):
        return fraction_text(value)
    if isinstance(value, tuple):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)
