"""Training-curve plots: per setting, the median over runs with a min-max band.

Files written under the experiment folder's plots/: val_acc1, val_loss and train_loss, as
.png (or .pdf, .svg: `onorm plot --format`), one panel per dataset in the experiment, one
line per setting (legend: setting and run count), dotted vertical lines where the learning
rate steps down.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import storage
from orchestrator.layout import ExperimentLayout
from orchestrator.report.paper import DATASET_NAMES, network_name
from orchestrator.report.stats import Runs, Setting, curve, load_runs

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

# column -> (y-axis label, title words)
PLOTS = {
    "val_acc1": ("top-1 accuracy (%)", "validation accuracy"),
    "val_loss": ("cross-entropy loss (log scale)", "validation loss"),
    "train_loss": ("cross-entropy loss (log scale)", "training loss"),
}


def plot_series(runs: Runs, column: str) -> dict[str, list[tuple[Setting, "pd.DataFrame"]]]:
    """What each panel shows: dataset -> [(setting, curve with epoch/median/min/max/runs)].

    Infinite values (diverged runs) become NaN: gaps in the line, not an axis to infinity.
    """
    import numpy as np

    panels: dict[str, list[tuple[Setting, Any]]] = {}
    for key, setting in runs.settings.items():
        c = curve(runs, key, column)
        if not len(c):
            continue
        for col in ("median", "min", "max"):
            c[col] = c[col].where(np.isfinite(c[col]), np.nan)
        panels.setdefault(setting.dataset, []).append((setting, c))
    return panels


def lr_steps(runs: Runs, settings: list[Setting]) -> list[int]:
    """Epochs after which the lr drops: config milestones, else read off the lr column."""
    steps: set[int] = set()
    for s in settings:
        if s.lr_milestones:
            steps.update(s.lr_milestones)
        elif "lr" in runs.metrics.columns and s.trial_ids:
            df = runs.metrics[runs.metrics["trial_id"] == s.trial_ids[0]].sort_values("epoch")
            lr, ep = df["lr"].to_numpy(dtype=float), df["epoch"].to_numpy()
            steps.update(int(ep[i - 1]) for i in range(1, len(lr)) if lr[i] < lr[i - 1])
    return sorted(steps)


def metric_figure(runs: Runs, column: str) -> "Figure | None":
    """One figure for `column`, a panel per dataset; None when there is nothing to draw."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = plot_series(runs, column)
    if not panels:
        return None
    ylabel, what = PLOTS.get(column, (column, column))
    fig = Figure(figsize=(7.5 * len(panels), 5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (dataset, series) in zip(axes, panels.items()):
        settings = [s for s, _ in series]
        networks = sorted({network_name(s.arch, s.depth) for s in settings})
        last = 0
        for s, c in series:
            epochs = c["epoch"].to_numpy()
            last = max(last, int(epochs.max()))
            name = s.label if len(networks) == 1 else f"{network_name(s.arch, s.depth)} {s.label}"
            n = len(s.trial_ids)
            diverged = f", {len(s.diverged)} diverged" if s.diverged else ""
            (line,) = ax.plot(epochs, c["median"].to_numpy(), lw=1.6,
                              marker="o" if len(epochs) <= 20 else None, ms=3,
                              label=f"{name} (n={n}{diverged})")
            if n > 1:
                ax.fill_between(epochs, c["min"].to_numpy(), c["max"].to_numpy(),
                                color=line.get_color(), alpha=0.18, lw=0)
        for i, step in enumerate(m for m in lr_steps(runs, settings) if m < last):
            # milestone k: epochs k+1 onward train with the lower lr, so the drop sits between
            ax.axvline(step + 0.5, color="0.4", ls=":", lw=1,
                       label="lr drops" if i == 0 else None)
        if column.endswith("loss"):
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{runs.experiment}: {DATASET_NAMES.get(dataset, dataset)} "
                     f"{', '.join(networks)}, {what}\n(median over runs, band: min-max)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def write_plots(exp_dir: Path, include_running: bool = False,
                runs: Runs | None = None, fmt: str = "png") -> list[Path]:
    """Write the plots that have data as `fmt` (png, pdf or svg); returns their paths (none
    when nothing has run)."""
    layout = ExperimentLayout(storage.location(exp_dir))
    runs = runs if runs is not None else load_runs(layout.dir, include_running)
    written = []
    for column in PLOTS:
        fig = metric_figure(runs, column)
        if fig is None:
            continue
        path = layout.plot(column, f".{fmt}")
        storage.write_with(path, lambda tmp, fig=fig: fig.savefig(tmp, dpi=110, format=fmt))
        written.append(path)
    return written
