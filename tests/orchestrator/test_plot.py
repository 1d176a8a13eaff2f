"""`onorm plot`: PNGs are written, and the drawn median lines are the median curves."""

from __future__ import annotations

import numpy as np
import pytest
from table_fixtures import MILESTONES, write_results

from orchestrator.cli import main
from orchestrator.report.plot import lr_steps, metric_figure
from orchestrator.report.stats import load_runs
from orchestrator.report.table import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def results(tmp_path):
    return write_results(tmp_path / "results" / "toy")


def drawn_lines(fig):
    """{legend label: (x, y)} of the data lines of every panel (lr-step lines excluded)."""
    out = {}
    for ax in fig.axes:
        for line in ax.lines:
            label = line.get_label()
            if not label.startswith("_") and label != "lr drops":
                out[label] = (np.asarray(line.get_xdata(), float),
                              np.asarray(line.get_ydata(), float))
    return out


def test_plotted_medians_equal_the_median_curves(results):
    lines = drawn_lines(metric_figure(load_runs(results), "val_acc1"))
    x, y = lines["online (afwd=1023/1024, abkw=127/128, ecm=ls) (n=3)"]
    np.testing.assert_array_equal(x, [1, 2, 3, 4])
    np.testing.assert_array_equal(y, [10, 30, 76, 30])
    np.testing.assert_array_equal(lines["batch (n=2)"][1], [25, 45, 62, 65])
    np.testing.assert_array_equal(lines["layer (n=1)"][1], [30, 55, 50, 52])
    # diverged run c3 scores chance (1%) after epoch 1: medians of (20,22,25), (30,32,1), ...
    np.testing.assert_array_equal(
        lines["online (afwd=511/512, abkw=15/16, ecm=ls) (n=3, 1 diverged)"][1],
        [22, 30, 40, 50])


def test_infinite_losses_are_gaps_and_bands_span_runs(results):
    fig = metric_figure(load_runs(results), "val_loss")
    lines = drawn_lines(fig)
    _, y = lines["online (afwd=511/512, abkw=15/16, ecm=ls) (n=3, 1 diverged)"]
    np.testing.assert_array_equal(y, [3.8, 3.0, 2.5, 2.25])
    cifar10 = fig.axes[0]
    assert cifar10.get_yscale() == "log"
    # one min-max band per multi-run setting in the CIFAR-10 panel (online x3, batch x2)
    assert len(cifar10.collections) == 2
    band = cifar10.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.4) and band[:, 1].max() == pytest.approx(2.2)


def test_lr_steps_from_config_and_from_lr_column(results, tmp_path):
    runs = load_runs(results)
    assert lr_steps(runs, list(runs.settings.values())) == MILESTONES
    fig = metric_figure(runs, "train_loss")
    steps = [ln.get_xdata()[0] for ln in fig.axes[0].lines if ln.get_linestyle() == ":"]
    assert steps == [m + 0.5 for m in MILESTONES]   # between epoch k and k+1
    for s in runs.settings.values():
        s.lr_milestones = ()  # as if config_json were missing: read the lr drops instead
    assert lr_steps(runs, list(runs.settings.values())) == MILESTONES


def test_cli_writes_pngs_and_prints_paths(results, capsys):
    assert main(["plot", "toy", "--results", str(results.parent)]) == 0
    out = capsys.readouterr().out.split()
    names = ["val_acc1.png", "val_loss.png", "train_loss.png"]
    assert [p.rsplit("/", 1)[-1] for p in out] == names
    for name in names:
        data = (results / "plots" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and 10_000 < len(data) < 3_000_000


def test_write_report_on_partial_results(tmp_path):
    assert write_report(tmp_path / "empty") == []
    # a metrics file with no rows yet: empty tables, no plots
    folder = write_results(tmp_path / "norows", runs=[])
    assert {p.suffix for p in write_report(folder)} == {".md", ".csv", ".tex"}
    assert "(no finished runs)" in (folder / "tables" / "loss.md").read_text()
    # only in-progress runs: tables say so, no plots
    folder = write_results(tmp_path / "toy", runs=[
        ("r1", "cifar10", "batch", {}, "running", [10, 20], [2.0, 1.0])])
    paths = write_report(folder)
    assert sorted(p.name for p in paths) == sorted(
        f"{m}.{e}" for m in ("accuracy", "loss") for e in ("md", "csv", "tex"))
    accuracy = (folder / "tables" / "accuracy.md").read_text()
    assert "2 run(s) left out (1 pending, 1 running)" in accuracy
    full = write_report(write_results(tmp_path / "full"))
    assert {p.name for p in full} >= {"val_acc1.png", "val_loss.png", "train_loss.png"}
