"""`onorm table`: every number of the paper's statistic on hand-made runs with known curves."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from table_fixtures import RUNS, write_results

from orchestrator.cli import main
from orchestrator.report.stats import load_runs
from orchestrator.report.table import table_rows, write_tables


def row_for(rows, dataset, norm, options=""):
    found = [r for r in rows if r["dataset"] == dataset and r["norm"] == norm
             and options in r["options"]]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def results(tmp_path):
    return write_results(tmp_path / "results" / "toy")


def test_best_epoch_is_on_the_median_curve_not_per_run(results):
    rows = table_rows(load_runs(results), "accuracy")
    r = row_for(rows, "CIFAR10", "online", "1023/1024")
    # median curve 10, 30, 76, 30: best at epoch 3, where no run has its own best
    assert r["best_epoch"] == 3 and r["epochs"] == 4
    assert (r["median"], r["min"], r["max"], r["mean"]) == (76.0, 75.0, 77.0, 76.0)
    assert r["std"] == pytest.approx(math.sqrt(2 / 3))  # ddof=0 over 75, 76, 77
    assert (r["runs"], r["diverged"]) == (3, 0)
    assert r["options"] == "afwd=1023/1024, abkw=127/128, ecm=ls"


def test_paper_columns_and_difference_for_matched_rows(results):
    runs = load_runs(results)
    acc = row_for(table_rows(runs, "accuracy"), "CIFAR10", "online", "1023/1024")
    assert (acc["paper_best_epoch"], acc["paper_epochs"], acc["paper_median"]) == (184, 250, 92.3)
    assert acc["diff"] == pytest.approx(76.0 - 92.3)
    loss = row_for(table_rows(runs, "loss"), "CIFAR10", "online", "1023/1024")
    assert (loss["paper_best_epoch"], loss["paper_median"]) == (102, 0.26)
    assert loss["diff"] == pytest.approx(0.6 - 0.26)
    # decays the paper did not use: no paper numbers to compare with
    other = row_for(table_rows(runs, "accuracy"), "CIFAR10", "online", "afwd=0.99")
    assert other["paper_median"] is None and other["diff"] is None
    assert other["options"] == "afwd=0.99, abkw=0.9, ecm=ls"


def test_loss_uses_argmin_with_its_own_best_epoch(results):
    r = row_for(table_rows(load_runs(results), "loss"), "CIFAR10", "online", "1023/1024")
    # median loss 2.0, 0.6, 0.9, 1.1: epoch 2 (accuracy's best epoch was 3)
    assert r["best_epoch"] == 2
    assert (r["median"], r["min"], r["max"]) == (0.6, 0.5, 0.7)
    assert r["mean"] == pytest.approx(0.6)
    assert r["std"] == pytest.approx(math.sqrt(0.02 / 3))


def test_even_run_count_and_tie_goes_to_earliest_epoch(results):
    runs = load_runs(results)
    acc = row_for(table_rows(runs, "accuracy"), "CIFAR10", "batch")
    # two runs: median of 50 and 80 is their mean
    assert (acc["best_epoch"], acc["median"], acc["min"], acc["max"], acc["mean"],
            acc["std"], acc["runs"]) == (4, 65.0, 50.0, 80.0, 65.0, 15.0, 2)
    assert acc["paper_median"] == 92.2 and acc["diff"] == pytest.approx(65 - 92.2)
    loss = row_for(table_rows(runs, "loss"), "CIFAR10", "batch")
    # median loss 1.375, 1.125, 0.6875, 0.6875: the tie goes to epoch 3
    assert (loss["best_epoch"], loss["median"], loss["min"], loss["max"],
            loss["std"]) == (3, 0.6875, 0.625, 0.75, 0.0625)


def test_single_run_has_no_min_max_std(results):
    r = row_for(table_rows(load_runs(results), "accuracy"), "CIFAR10", "layer")
    assert (r["best_epoch"], r["median"], r["mean"], r["runs"]) == (2, 55.0, 55.0, 1)
    assert r["min"] is None and r["max"] is None and r["std"] is None
    assert r["paper_median"] == 87.4


def test_diverged_run_counts_and_scores_chance_then_infinite_loss(results):
    runs = load_runs(results)
    acc = row_for(table_rows(runs, "accuracy"), "CIFAR100", "online")
    # c3 diverged at epoch 2: chance accuracy (1% on CIFAR-100) at epochs 2-4
    values = [50.0, 52.0, 1.0]
    assert (acc["best_epoch"], acc["median"], acc["min"], acc["max"]) == (4, 50.0, 1.0, 52.0)
    assert acc["mean"] == pytest.approx(np.mean(values))
    assert acc["std"] == pytest.approx(math.sqrt(sum((v - 103 / 3) ** 2 for v in values) / 3))
    assert (acc["runs"], acc["diverged"]) == (3, 1)
    assert acc["paper_median"] == 68.6
    loss = row_for(table_rows(runs, "loss"), "CIFAR100", "online")
    assert (loss["best_epoch"], loss["median"], loss["min"]) == (4, 2.25, 2.0)
    assert math.isinf(loss["max"]) and math.isinf(loss["mean"]) and math.isinf(loss["std"])
    assert loss["diff"] == pytest.approx(2.25 - 1.12)


def test_in_progress_runs_left_out_and_counted(results):
    runs = load_runs(results)
    assert runs.excluded == {"running": 1, "pending": 1}
    md = write_tables(results)[("accuracy", "md")].read_text()
    assert "2 run(s) left out (1 pending, 1 running); pass --include-running" in md


def test_include_running_uses_them(results):
    runs = load_runs(results, include_running=True)
    assert runs.excluded == {}
    r = row_for(table_rows(runs, "accuracy"), "CIFAR10", "batch")
    # bn3 joins: epoch 4 holds 50, 80, 99
    assert (r["best_epoch"], r["median"], r["min"], r["max"], r["runs"]) == (4, 80.0, 50.0, 99.0, 3)
    assert r["mean"] == pytest.approx(229 / 3)


def test_without_trials_parquet_every_run_counts_as_completed(tmp_path):
    folder = write_results(tmp_path / "toy", with_trials=False)
    runs = load_runs(folder)
    assert runs.excluded == {}
    assert any("trials.parquet not found" in n for n in runs.notes)
    r = row_for(table_rows(runs, "accuracy"), "CIFAR10", "batch")
    assert r["runs"] == 3 and r["median"] == 80.0
    # the NaN loss alone marks c3 as diverged
    assert row_for(table_rows(runs, "accuracy"), "CIFAR100", "online")["diverged"] == 1


def test_different_recipes_are_different_settings(tmp_path):
    folder = write_results(tmp_path / "toy", runs=RUNS[3:5], extra_config={"bn2": {"epochs": 8}})
    rows = table_rows(load_runs(folder), "accuracy")
    assert [(r["options"], r["runs"], r["median"]) for r in rows] == [
        ("epochs=4", 1, 60.0), ("epochs=8", 1, 80.0)]


def test_files_hold_the_values_in_three_formats(results):
    written = write_tables(results)
    assert sorted(p.name for p in written.values()) == sorted(
        f"{m}.{e}" for m in ("accuracy", "loss") for e in ("md", "csv", "tex"))
    assert all(p.parent == results / "tables" for p in written.values())
    with written[("accuracy", "csv")].open() as fh:
        rows = list(csv.DictReader(fh))
    online = next(r for r in rows if r["options"].startswith("afwd=1023"))
    assert (online["best_epoch"], float(online["median"]), float(online["paper_median"])) == (
        "3", 76.0, 92.3)
    assert float(online["diff"]) == pytest.approx(-16.3)
    layer = next(r for r in rows if r["norm"] == "layer")
    assert (layer["min"], layer["max"], layer["std"], layer["runs"]) == ("", "", "", "1")
    md = written[("accuracy", "md")].read_text()
    assert ("| CIFAR10 | ResNet20 | online | afwd=1023/1024, abkw=127/128, ecm=ls | 3 | 4 | "
            "76.00 | 75.00 | 77.00 | 76.00 | 0.816 | 3 | 0 | 184 | 250 | 92.30 | -16.30 |") in md
    assert "| CIFAR10 | ResNet20 | layer |  | 2 | 4 | 55.00 | N/A | N/A | 55.00 | N/A | 1 |" in md
    assert "| 3 | 1† | 188 | 250 | 68.60 | -18.60 |" in md
    tex = written[("loss", "latex")].read_text()
    assert r"\begin{tabular}" in tex
    assert ("CIFAR10 & ResNet20 & batch &  & 3 & 4 & 0.688 & 0.625 & 0.750 & 0.688 & 0.0625 & "
            r"2 & 0 & 103 & 250 & 0.260 & +0.427 \\") in tex
    assert r"1\textdagger{}" in tex


def test_cli_prints_the_table_and_writes_files(results, capsys):
    code = main(["table", "toy", "--results", str(results.parent), "--metric", "loss"])
    out = capsys.readouterr().out
    assert code == 0
    assert "## toy: validation loss" in out and "validation top-1" not in out
    assert "| 0.600 | 0.500 | 0.700 |" in out
    assert (results / "tables" / "accuracy.csv").exists()


def test_cli_csv_format_and_results_dir_path(results, capsys):
    assert main(["table", str(results), "--format", "csv", "--metric", "accuracy"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dataset,network,norm,options,best_epoch")


def test_cli_missing_results_is_one_line_error(tmp_path, capsys):
    code = main(["table", "nosuch", "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and "no results for 'nosuch'" in err
    assert "Traceback" not in err


def test_cli_missing_results_path_is_one_line_error(tmp_path, capsys):
    code = main(["plot", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1
    assert "nowhere/metrics.parquet does not exist" in err


def test_paper_rows_match_only_the_paper_settings():
    from orchestrator.report.paper import paper_entry

    row = paper_entry("accuracy", "imagenet", "resnet50", 0, "online",
                      dict(afwd=0.999, abkw=0.99, ecm="ls"))
    assert (row["best_epoch"], row["total_epochs"], row["median"]) == (91, 100, 76.3)
    assert paper_entry("loss", "cifar100", "resnet", 20, "group",
                       dict(gn_num_groups=8))["median"] == 1.35
    assert paper_entry("loss", "cifar100", "resnet", 20, "group", dict(gn_num_groups=4)) is None
    assert paper_entry("accuracy", "cifar10", "resnet", 20, "online",
                       dict(afwd=1023 / 1024, abkw=127 / 128, ecm="ac")) is None
    assert paper_entry("accuracy", "cifar10", "resnet", 32, "batch", {}) is None
