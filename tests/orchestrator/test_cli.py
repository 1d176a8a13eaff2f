"""The `onorm` command line itself: a closed pipe, a subcommand's bad argument."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from table_fixtures import write_results

from orchestrator.cli import EXIT_BROKEN_PIPE, main

REPO = Path(__file__).resolve().parents[2]


def test_a_closed_pipe_ends_quietly(tmp_path):
    # `onorm table X | head -1`: the reader is gone before the table is printed
    results = write_results(tmp_path / "results" / "toy")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "table", str(results)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE
    assert err == ""


@pytest.mark.parametrize("argv, usage", [
    (["run", "demo", "--bogus"], "usage: onorm run [-h]"),
    (["table", "x", "--colour", "red"], "usage: onorm table [-h]"),
    (["data", "synth-cifar", "d", "--nope"], "usage: onorm data synth-cifar [-h]"),
])
def test_a_bad_argument_shows_the_subcommands_usage(argv, usage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and "unrecognized arguments: " in err, err
    assert "usage: onorm [-h] COMMAND" not in err


def test_train_names_its_flag_in_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["train", "cifar10", "d", "--nope"])
    err = capsys.readouterr().err
    assert err == ("onorm train: error: unrecognized arguments: --nope "
                   "(see onorm train --help)\n")
