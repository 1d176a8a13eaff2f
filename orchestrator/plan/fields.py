"""Checks of single values in experiments.yaml; every error names the experiment and key path.

Trial settings are checked against `TrialConfig`'s own field specs (trainers.config), so the
file, the trainer and `onorm train` accept exactly the same values.
"""

from __future__ import annotations

import math
from typing import Any

from trainers.config import SettingError, config_specs, parse_setting
from trainers.decay import parse_fraction
from trainers.errors import UserError

RESOURCE_KEYS = ("cpu", "gpu", "workers", "placement", "custom")
# How Ray Train places a trial's K workers (its placement-group strategies): on one node unless
# asked otherwise, so that a multi-GPU trial never crosses a network it was not sized for.
PLACEMENTS = ("strict_pack", "pack", "spread")
# Ray's own resource names: `custom` names the user's node resources (`ray start --resources`)
RAY_RESOURCES = ("cpu", "gpu", "memory", "object_store_memory")
# Trial settings the experiment fixes itself (dataset, data_dir) or the cell list sets (norm, seed).
RESERVED_SETTINGS = ("dataset", "data_dir", "norm", "seed")
# The most trials one experiment may plan: a grid larger than this is a typo far more often
# than a plan (and expanding a million trials takes minutes before anything is refused).
MAX_TRIALS = 10_000


def where(exp: str, key: str) -> str:
    return f"experiment {exp!r}, key {key!r}"


def as_int(exp: str, key: str, value: Any, minimum: int = 0, maximum: int | None = None
           ) -> int:
    """An integer in [minimum, maximum]; every count in the file has a maximum, so that no
    typo (a seed count of 10**9) hangs the plan or overflows a Parquet column."""
    wanted = (f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]")
    if (not isinstance(value, int) or isinstance(value, bool) or value < minimum
            or (maximum is not None and value > maximum)):
        raise UserError(f"{where(exp, key)}: expected an integer {wanted}, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """repr, but a 5,000-digit integer or a huge string stays one readable line."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def as_number(exp: str, key: str, value: Any) -> float:
    """A number or an exact fraction string such as "1023/1024" (never evaluated as code)."""
    if isinstance(value, bool):
        raise UserError(f"{where(exp, key)}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        try:
            finite = math.isfinite(value)
        except OverflowError:   # an integer beyond float's range
            finite = False
        if not finite:   # YAML's .nan and .inf
            raise UserError(f"{where(exp, key)}: expected a finite number, got {_shown(value)}")
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
    """{cpu, gpu} per worker and `workers` (K data-parallel workers per trial, default 1)."""
    raw = as_mapping(exp, key, raw)
    check_keys(exp, key, raw, RESOURCE_KEYS)
    out = dict(base or {"cpu": 1.0, "gpu": 0.0, "workers": 1})
    for name, value in raw.items():
        if name == "workers":
            out[name] = as_int(exp, f"{key}.workers", value, 1)
            continue
        if name in ("placement", "custom"):
            out[name] = (parse_placement if name == "placement" else parse_custom)(
                exp, f"{key}.{name}", value)
            continue
        number = as_number(exp, f"{key}.{name}", value)
        if number < 0:
            raise UserError(f"{where(exp, key + '.' + name)}: must be >= 0, got {value!r}")
        if number > 1 and number != int(number):
            raise UserError(f"{where(exp, key + '.' + name)}: fractions are allowed only below 1 "
                            f"(several trials sharing one device); got {value!r}")
        out[name] = number
    if out["cpu"] <= 0 and out["gpu"] <= 0:
        raise UserError(f"{where(exp, key)}: a trial needs some cpu or gpu, got {raw!r}")
    if out["workers"] > 1 and 0 < out["gpu"] < 1:
        raise UserError(f"{where(exp, key + '.gpu')}: a trial of {out['workers']} workers needs "
                        f"whole GPUs per worker (NCCL gives each rank its own device), got "
                        f"{out['gpu']:g}: use gpu: 1, or workers: 1 to share a GPU")
    return out


def parse_placement(exp: str, key: str, value: Any) -> str:
    """`placement`: where a trial's K workers go (strict_pack, the default: all on one node)."""
    if value not in PLACEMENTS:
        raise UserError(f"{where(exp, key)}: expected one of {', '.join(PLACEMENTS)} "
                        f"(strict_pack: every worker on one node), got {_shown(value)}")
    return value


def parse_custom(exp: str, key: str, value: Any) -> dict[str, float]:
    """`custom: {NAME: AMOUNT}`: custom Ray resources the trial asks for (the coordinating
    trial, for K workers), so it runs only on nodes started with `--resources '{"NAME": N}'`."""
    value = as_mapping(exp, key, value)
    out = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not name or name.lower() in RAY_RESOURCES:
            raise UserError(f"{where(exp, key)}: {_shown(name)} is not a custom resource name "
                            f"(cpu and gpu have their own keys)")
        number = as_number(exp, f"{key}.{name}", amount)
        if number <= 0:
            raise UserError(f"{where(exp, f'{key}.{name}')}: must be > 0, got {amount!r}")
        out[name] = number
    return out


def parse_settings(exp: str, context: str, raw: dict[str, Any], extra_keys: tuple[str, ...] = ()
                   ) -> dict[str, Any]:
    """Trial settings checked against their TrialConfig fields; `extra_keys` pass through
    (a cell's seeds and resources)."""
    allowed = [k for k, spec in config_specs().items()
               if k not in RESERVED_SETTINGS and not spec.derived] + list(extra_keys)
    check_keys(exp, context, raw, allowed)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in extra_keys:
            out[key] = value
            continue
        try:
            out[key] = parse_setting(key, value)
        except SettingError as err:
            raise UserError(f"{where(exp, f'{context}.{key}')}: expected {err}, "
                            f"got {_shown(value)}") from None
    return out


def parse_seeds(exp: str, key: str, value: Any) -> tuple[int, ...]:
    """A count (seeds 0..n-1) or a list of distinct seeds, each within the seed field's range
    (numpy's 32 bits); a count is bounded before anything is expanded."""
    seed_max = int(config_specs()["seed"].meta["high"])
    if isinstance(value, list):
        seeds = tuple(as_int(exp, f"{key}[{i}]", s, 0, seed_max) for i, s in enumerate(value))
        if not seeds or len(set(seeds)) != len(seeds):
            raise UserError(f"{where(exp, key)}: expected distinct seeds, got {_shown(value)}")
        return seeds
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TRIALS:
        raise UserError(too_many_trials(exp, key, value))
    count = as_int(exp, key, value, 1)
    return tuple(range(count))


def too_many_trials(exp: str, key: str, count: int) -> str:
    shown = _shown(count) if count >= 10**30 else f"{count:,}"
    return (f"{where(exp, key)}: the experiment would have {shown} trials, more than "
            f"{MAX_TRIALS:,}: a typo? If it is the plan, split it into several experiments")
