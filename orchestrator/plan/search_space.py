"""Search spaces for tuning Online Norm's decay factors (afwd, abkw), and their points.

The paper's decay factors are dyadic, 1 - 2^-k, so the natural grid is over k; a continuous
space samples 1 - a log-uniformly. Points are generated here, deterministically from a seed,
rather than inside Ray Tune, so every configuration has a stable trial_id and a re-submitted
tuning run skips what finished and resumes what was interrupted, exactly like `onorm run`.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

from trainers.decay import dyadic
from trainers.errors import UserError

DECAY_KEYS = ("afwd", "abkw")
SEARCHERS = ("grid", "random", "optuna")


@dataclass(frozen=True)
class DecayAxis:
    """One decay factor's range: k in [low, high] (dyadic) or 1-a in [low, high] (loguniform)."""

    kind: str
    low: float
    high: float

    def values(self) -> list[float]:
        """Every grid value (dyadic only), largest decay last."""
        return [dyadic(k) for k in range(int(self.low), int(self.high) + 1)]

    def sample(self, rng: random.Random) -> float:
        if self.kind == "dyadic":
            return dyadic(rng.randint(int(self.low), int(self.high)))
        one_minus = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return 1.0 - one_minus


def parse_axis(where: str, raw: Any) -> DecayAxis:
    """`{dyadic: [kmin, kmax]}` or `{loguniform: [min(1-a), max(1-a)]}`."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise UserError(f"{where}: give exactly one of `dyadic: [kmin, kmax]` or "
                        f"`loguniform: [low, high]` (range of 1 - a), got {raw!r}")
    (kind, bounds), = raw.items()
    if kind not in ("dyadic", "loguniform"):
        raise UserError(f"{where}: unknown space kind {kind!r}: use dyadic or loguniform")
    if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
        raise UserError(f"{where}.{kind}: expected a list of two numbers [low, high], "
                        f"got {bounds!r}")
    low, high = bounds
    if kind == "dyadic":
        if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high <= 30):
            raise UserError(f"{where}.dyadic: expected integers 1 <= kmin <= kmax <= 30 "
                            f"(a = 1 - 2^-k), got {bounds!r}")
    elif not (0 < low <= high < 1):
        raise UserError(f"{where}.loguniform: expected 0 < low <= high < 1 for 1 - a, "
                        f"got {bounds!r}")
    return DecayAxis(kind, float(low), float(high))


def parse_space(where: str, raw: Any) -> dict[str, DecayAxis]:
    if not isinstance(raw, dict) or set(raw) != set(DECAY_KEYS):
        raise UserError(f"{where}: the search space must give both afwd and abkw, got "
                        f"{sorted(raw) if isinstance(raw, dict) else raw!r}")
    return {key: parse_axis(f"{where}.{key}", raw[key]) for key in DECAY_KEYS}


def grid_points(space: dict[str, DecayAxis]) -> list[dict[str, float]]:
    """The full afwd x abkw grid; only dyadic axes have a grid."""
    for key, axis in space.items():
        if axis.kind != "dyadic":
            raise UserError(f"searcher grid needs dyadic axes, but {key} is {axis.kind}: "
                            "use searcher random (or optuna) for a continuous space")
    return [dict(afwd=f, abkw=b)
            for f, b in itertools.product(space["afwd"].values(), space["abkw"].values())]


def random_points(space: dict[str, DecayAxis], num_samples: int, seed: int
                  ) -> list[dict[str, float]]:
    """`num_samples` distinct points drawn reproducibly from `seed`."""
    rng = random.Random(seed)
    points: list[dict[str, float]] = []
    seen: set[tuple[float, float]] = set()
    for _ in range(num_samples * 50):
        if len(points) == num_samples:
            break
        point = dict(afwd=space["afwd"].sample(rng), abkw=space["abkw"].sample(rng))
        key = (point["afwd"], point["abkw"])
        if key not in seen:
            seen.add(key)
            points.append(point)
    return points
