"""The tuning heatmap: a search's ranking drawn over afwd x abkw."""

from __future__ import annotations

from pathlib import Path

from orchestrator import storage
from orchestrator.report.ranking import dyadic_grid
from trainers.decay import dyadic, fraction_text


def plot_heatmap(ranking, path: Path, title: str) -> Path:
    """afwd x abkw map of the ranking's median best accuracy, written atomically to `path`.

    Dyadic values are drawn as a heatmap over k, blank where a cell did not run; points of a
    continuous space as a scatter on log2(1 - a) axes. A matplotlib Figure of its own, so the
    process's pyplot backend is left as it was.
    """
    import numpy as np
    from matplotlib.figure import Figure

    acc = ranking["median_best_val_acc1"].to_numpy(dtype=float)
    dense = dyadic_grid(ranking)
    if dense is not None:
        rows, cols, grid = dense
        fig = Figure(figsize=(2.4 + 0.8 * len(cols), 1.8 + 0.55 * len(rows)))
        ax = fig.subplots()
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
        fig = Figure(figsize=(6.5, 5))
        ax = fig.subplots()
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
    storage.write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    return path
