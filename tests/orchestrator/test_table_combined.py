"""`onorm table A B`: the paper's layout across experiments, its cells from known curves
(table_fixtures.py: the CIFAR-10 runs in one experiment, the CIFAR-100 ones in another)."""

from __future__ import annotations

import csv
import io

import pytest
from table_fixtures import RUNS, write_results

from orchestrator.cli import main


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "results"
    write_results(root / "c10", runs=[r for r in RUNS if r[1] == "cifar10"])
    write_results(root / "c100", runs=[r for r in RUNS if r[1] == "cifar100"])
    return root


def table(capsys, root, *flags):
    assert main(["table", "c10", "c100", "--results", str(root), *flags]) == 0
    return capsys.readouterr().out


def test_markdown_rows_are_normalizers_and_groups_are_datasets(root, capsys):
    out = table(capsys, root, "--metric", "accuracy")
    lines = out.splitlines()
    start = lines.index("| normalizer | CIFAR10 ResNet20 | paper | CIFAR100 ResNet20 | paper |")
    assert lines[start + 2:start + 6] == [
        # online, paper decays: best median epoch 3 (75, 76, 77); CIFAR-100: one of three
        # diverged (chance, 1%, from epoch 2), best epoch 4 (50, 52, 1)
        "| online | 76.00 (75.00-77.00) | 92.3 | 50.00 (1.00-52.00) † | 68.6 |",
        # other decays than the paper's: a row of their own, no paper number
        "| online (afwd=0.99, abkw=0.9, ecm=ls) | 43.00 | – | – | – |",
        # batch: the stopped run counts, the running one does not: epoch 4 (50, 80)
        "| batch | 65.00 (50.00-80.00) | 92.2 | – | – |",
        "| layer | 55.00 | 87.4 | – | – |",   # one run: the median alone
    ]
    assert ("CIFAR10 ResNet20 (c10): online (afwd=1023/1024, abkw=127/128, ecm=ls; 3 run(s), "
            "best epoch 3/4), online (afwd=0.99, abkw=0.9, ecm=ls) (1 run(s), best epoch 4/4)"
            ) in out
    assert "c10: 2 run(s) left out (1 pending, 1 running)" in out
    # --include-running takes the running batch run (99 at epoch 4): epoch 4 of 50, 80, 99
    assert "| batch | 80.00 (50.00-99.00) | 92.2 |" in table(capsys, root, "--include-running")


def test_loss_csv_and_files(root, capsys):
    rows = list(csv.DictReader(io.StringIO(table(capsys, root, "--format", "csv",
                                                 "--metric", "loss").split("wrote ")[0])))
    online = rows[0]
    assert online["normalizer"] == "online"
    # best loss epoch of the median curve (2.0, 0.6, 0.9, 1.1): 2, values 0.5, 0.7, 0.6
    assert {k: online[f"CIFAR10 ResNet20 {k}"] for k in
            ("median", "min", "max", "runs", "best_epoch", "paper_median")} == {
        "median": "0.6", "min": "0.5", "max": "0.7", "runs": "3", "best_epoch": "2",
        "paper_median": "0.26"}
    # the diverged run's loss is infinite from epoch 2: epoch 4 of (2.0, 2.25, inf)
    assert (online["CIFAR100 ResNet20 median"], online["CIFAR100 ResNet20 max"]) == \
        ("2.25", "inf")
    assert rows[2]["normalizer"] == "batch" and rows[2]["CIFAR100 ResNet20 median"] == ""
    folder = root / "_tables" / "c10+c100"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{m}.{e}" for m in ("accuracy", "loss") for e in ("md", "csv", "tex"))


def test_latex_uses_booktabs_with_a_column_group_per_dataset(root, capsys):
    tex = table(capsys, root, "--format", "latex", "--metric", "accuracy")
    assert (r"\begin{tabular}{lrrrr}" "\n" r"\toprule" "\n"
            r" & \multicolumn{2}{c}{CIFAR10 ResNet20} & \multicolumn{2}{c}{CIFAR100 ResNet20} \\"
            "\n" r"\cmidrule(lr){2-3} \cmidrule(lr){4-5}" "\n"
            r"normalizer & ours & paper & ours & paper \\" "\n" r"\midrule" "\n"
            r"online & 76.00 (75.00--77.00) & 92.3 & 50.00 (1.00--52.00) \textdagger{} & 68.6 \\"
            ) in tex
    assert r"\bottomrule" + "\n" + r"\end{tabular}" in tex and r"\hline" not in tex


def test_groups_of_one_dataset_are_told_apart_and_names_are_checked(root, tmp_path, capsys):
    write_results(root / "again", runs=[r for r in RUNS if r[1] == "cifar100"])
    assert main(["table", "c10", "c100", "again", "--results", str(root), "--metric",
                 "accuracy"]) == 0
    out = capsys.readouterr().out
    assert ("| normalizer | CIFAR10 ResNet20 | paper | c100: CIFAR100 ResNet20 | paper | "
            "again: CIFAR100 ResNet20 | paper |") in out
    assert main(["table", "c10", "c10", "--results", str(root)]) == 2
    assert "experiment 'c10' is given twice" in capsys.readouterr().err
    assert main(["table", "c10", "nowhere", "--results", str(root)]) == 2
    assert "no results for 'nowhere'" in capsys.readouterr().err


def test_plots_as_pdf_and_svg(root, capsys, monkeypatch):
    import orchestrator.report.plot as plot

    monkeypatch.setattr(plot, "PLOTS", {"val_acc1": plot.PLOTS["val_acc1"]})   # one figure
    for fmt, magic in (("pdf", b"%PDF-"), ("svg", b"<?xml")):
        assert main(["plot", "c10", "--results", str(root), "--format", fmt]) == 0
        path = root / "c10" / "plots" / f"val_acc1.{fmt}"
        assert capsys.readouterr().out.split() == [str(path)]
        data = path.read_bytes()
        assert data.startswith(magic) and len(data) > 5_000
    # the SVG's legend names the settings
    assert b"online (afwd=1023/1024, abkw=127/128, ecm=ls) (n=3)" in data
