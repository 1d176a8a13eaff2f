"""Search spaces, ranking, heatmap and YAML snippet for tuning Online Norm's (afwd, abkw).

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
from pathlib import Path
from typing import Any

from trainers.decay import dyadic, dyadic_k, fraction_text
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
        raise UserError(f"{where}.{kind}: expected a list of two numbers [low, high], got {bounds!r}")
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


def random_points(space: dict[str, DecayAxis], num_samples: int, seed: int) -> list[dict[str, float]]:
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


def rank_configurations(metrics, trials=None):
    """One row per (afwd, abkw): median over seeds of each run's best val_acc1, best first.

    A run stopped early by the scheduler still contributes the best accuracy it reached,
    which is what ASHA compared it on.
    """
    import pandas as pd

    if metrics is None or len(metrics) == 0:
        return pd.DataFrame(columns=["afwd", "abkw", "median_best_val_acc1", "runs",
                                     "stopped", "max_epoch"])
    per_run = (metrics.groupby(["trial_id", "afwd", "abkw"], as_index=False)
               .agg(best_val_acc1=("val_acc1", "max"), last_epoch=("epoch", "max")))
    if trials is not None and "status" in trials:
        per_run = per_run.merge(trials[["trial_id", "status"]], on="trial_id", how="left")
    else:
        per_run["status"] = "completed"
    ranking = (per_run.groupby(["afwd", "abkw"], as_index=False)
               .agg(median_best_val_acc1=("best_val_acc1", "median"),
                    runs=("trial_id", "count"),
                    stopped=("status", lambda s: int((s == "stopped").sum())),
                    max_epoch=("last_epoch", "max")))
    return ranking.sort_values(["median_best_val_acc1", "max_epoch"],
                               ascending=[False, False], ignore_index=True)


def load_ranking(exp_dir: Path):
    """rank_configurations over an experiment folder's Parquet files (empty when none yet)."""
    import pandas as pd

    metrics_path, trials_path = exp_dir / "metrics.parquet", exp_dir / "trials.parquet"
    metrics = pd.read_parquet(metrics_path) if metrics_path.exists() else None
    trials = pd.read_parquet(trials_path) if trials_path.exists() else None
    return rank_configurations(metrics, trials)


def yaml_snippet(best: dict[str, float]) -> str:
    """The best pair as an online-norm cell to paste into an experiment of experiments.yaml."""
    return ("- norm: online\n"
            f"  afwd: {fraction_text(best['afwd'], exact=True)}\n"
            f"  abkw: {fraction_text(best['abkw'], exact=True)}\n"
            "  ecm: ls\n")


def dyadic_grid(ranking):
    """(afwd k's, abkw k's, accuracy grid with NaN where not run) over the whole k ranges,
    or None when some value is not 1 - 2^-k."""
    import numpy as np

    k_afwd = [dyadic_k(v) for v in ranking["afwd"]]
    k_abkw = [dyadic_k(v) for v in ranking["abkw"]]
    if None in k_afwd or None in k_abkw:
        return None
    rows = list(range(min(k_afwd), max(k_afwd) + 1))
    cols = list(range(min(k_abkw), max(k_abkw) + 1))
    grid = np.full((len(rows), len(cols)), np.nan)
    for ka, kb, value in zip(k_afwd, k_abkw, ranking["median_best_val_acc1"]):
        grid[rows.index(ka), cols.index(kb)] = value
    return rows, cols, grid


def plot_heatmap(ranking, path: Path, title: str) -> Path:
    """afwd x abkw map of the ranking's median best accuracy.

    Dyadic values are drawn as a heatmap over k, blank where a cell did not run; points of a
    continuous space as a scatter on log2(1 - a) axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    acc = ranking["median_best_val_acc1"].to_numpy(dtype=float)
    dense = dyadic_grid(ranking)
    if dense is not None:
        rows, cols, grid = dense
        fig, ax = plt.subplots(figsize=(2.4 + 0.8 * len(cols), 1.8 + 0.55 * len(rows)))
        image = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), [fraction_text(dyadic(k)) for k in cols], rotation=45,
                      ha="right")
        ax.set_yticks(range(len(rows)), [fraction_text(dyadic(k)) for k in rows])
        for i in range(len(rows)):
            for j in range(len(cols)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center",
                            color="white", fontsize=8)
        ax.set_xlabel("abkw (backward decay factor)")
        ax.set_ylabel("afwd (forward decay factor)")
    else:
        fig, ax = plt.subplots(figsize=(6.5, 5))
        x = np.log2(1.0 - ranking["abkw"].to_numpy(dtype=float))
        y = np.log2(1.0 - ranking["afwd"].to_numpy(dtype=float))
        image = ax.scatter(x, y, c=acc, cmap="viridis", s=60, edgecolors="black")
        ax.set_xlabel("log2(1 - abkw)")
        ax.set_ylabel("log2(1 - afwd)")
    best = ranking.iloc[0]
    fig.colorbar(image, ax=ax, label="median best val top-1 (%)")
    ax.set_title(f"{title}\nbest: afwd {fraction_text(float(best['afwd']))}, "
                 f"abkw {fraction_text(float(best['abkw']))}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
