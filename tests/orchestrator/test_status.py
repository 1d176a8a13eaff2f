"""`onorm status` and the live view, on a grid recorded as a run records it (no Ray): the
counts, the running trials with their epoch, trials cut short shown as pending, the view
kept to a small terminal. (`onorm status` beside a real run: test_run_driver_killed.py.)"""

from __future__ import annotations

import re
import time

import pytest
import yaml
from orch_helpers import PROV, epoch, tiny_trial

from orchestrator.cli import main
from orchestrator.execute.live import LiveView
from orchestrator.execute.lock import experiment_lock
from orchestrator.execute.recorder import Recorder
from orchestrator.execute.store import TrialStore
from orchestrator.layout import ExperimentLayout
from orchestrator.report.results import read_results
from trainers.errors import UserError


def timed(e: int, seconds: float) -> dict:
    return {**epoch(e, 10.0 * e), "epoch_time_s": seconds}


def grid(tmp_path, n_pending: int = 1):
    """A completed trial (2 epochs), a diverged one, a running one at epoch 2 of 4 (its store
    one epoch ahead of the Parquet files) and `n_pending` pending ones."""
    data = tmp_path / "data"
    done, diverged = tiny_trial(data, "batch", epochs=2), tiny_trial(data, "none", epochs=3)
    running = tiny_trial(data, "online", epochs=4)
    pending = [tiny_trial(data, "group", seed=s, epochs=4) for s in range(n_pending)]
    layout = ExperimentLayout.of(tmp_path / "results", "grid")
    trials = [done, diverged, running, *pending]
    rec = Recorder(layout, trials, PROV)
    store = TrialStore(layout.store)
    for trial, epochs in ((done, 2), (diverged, 1), (running, 1)):
        store.begin(trial.trial_id, trial.to_payload(), {"host": "h", **PROV})
        rec.started(trial.trial_id)
        for e in range(1, epochs + 1):
            store.put(trial.trial_id, e, b"w", timed(e, 30.0))
            rec.result(trial.trial_id, {**timed(e, 30.0), "attempt": 1})
    store.put(running.trial_id, 2, b"w", timed(2, 30.0))   # stored, not yet recorded
    for trial, outcome in ((done, "completed"), (diverged, "diverged")):
        store.finish(trial.trial_id, outcome)
        rec.finished(trial.trial_id)
    # paces of 30 s an epoch: the running trial started 60 s ago (2 epochs in the store)
    now = time.time()
    for trial, (start, end) in ((done, (now - 600, now - 540)), (diverged, (now - 600, now - 570)),
                                (running, (now - 60, now))):
        rec.rows[trial.trial_id].update(started_at=start, updated_at=end)
    rec.write(metrics=True)
    # the plan, as `onorm run` writes it (write_resolved)
    layout.resolved.write_text(yaml.safe_dump({"name": "grid", "kind": "grid", "trials": [
        t.to_payload() for t in trials]}))
    return layout, rec, running, pending


def status(capsys, *args) -> str:
    assert main(["status", *args]) == 0
    out, err = capsys.readouterr()
    status.err = err
    return out


def test_status_counts_a_running_grid_and_its_running_trial(tmp_path, capsys):
    layout, rec, running, pending = grid(tmp_path)
    with experiment_lock(layout.dir):   # the run holding the folder: this process
        out = status(capsys, "--results", str(tmp_path / "results"))
    lines = out.splitlines()
    assert lines[0].startswith("grid (grid): 2/4 done (1 completed, 1 diverged), 1 running, "
                               "1 pending; elapsed ")
    # ETA: the running trial's 2 epochs and the pending one's 4, at 30 s each, on 1 slot
    assert re.search(r", ETA 3m0\ds$", lines[0]), lines[0]
    assert lines[1].startswith("  running: pid ")
    row = next(ln for ln in lines if running.trial_id in ln).split()
    assert row[:7] == [running.trial_id, "online", "1023/1024", "127/128", "ls", "0", "running"]
    assert row[7] == "2/4" and row[-1] == "20.00"   # epoch 2 from the store
    assert re.fullmatch(r"1m0\ds", row[-3]) and re.fullmatch(r"1m0\ds", row[-2])   # elapsed, ETA
    assert pending[0].trial_id not in out   # only running trials in the overview


def test_a_grid_no_run_holds_shows_its_running_trials_as_pending(tmp_path, capsys):
    layout, rec, running, pending = grid(tmp_path)
    out = status(capsys, "grid", "--results", str(tmp_path / "results"))
    lines = out.splitlines()
    assert lines[0] == "grid (grid): 2/4 done (1 completed, 1 diverged), 2 pending"
    assert lines[1].startswith("  not running (last update ")
    row = next(ln for ln in lines if running.trial_id in ln)
    assert re.search(r"\bpending\s+2/4\b", row)
    assert pending[0].trial_id in out   # EXPERIMENT named: every trial
    assert not (layout.dir / "tensorboard").exists()   # read-only


def test_status_on_a_damaged_trials_file_says_what_the_other_commands_say(tmp_path, capsys):
    layout, rec, running, pending = grid(tmp_path)
    layout.trials.write_bytes(layout.trials.read_bytes()[:100])
    with pytest.raises(UserError) as what_table_says:
        read_results(layout, "trials")
    out = status(capsys, "--results", str(tmp_path / "results"))
    assert status.err == f"warning: {what_table_says.value} (shown from the trial store alone)\n"
    assert "`onorm run grid --results " in status.err
    # from the store and the plan: the outcomes, the trial begun and not finished, the rest
    assert out.splitlines()[0] == ("grid (grid): 2/4 done (1 completed, 1 diverged), "
                                   "2 pending")


def render_lines(view, rec, width, height) -> list[str]:
    from rich.console import Console

    console = Console(width=width, height=height, record=True, file=open("/dev/null", "w"))
    console.print(view.render(rec, width, height))
    return console.export_text().rstrip("\n").splitlines()


def test_the_live_view_fits_a_small_terminal_and_shows_reset_trials_as_pending(tmp_path):
    layout, rec, running, pending = grid(tmp_path, n_pending=12)
    view = LiveView("grid", tty=False)
    view.started_at = time.time() - 200
    lines = render_lines(view, rec, 60, 10)
    assert len(lines) <= 10 and max(map(len, lines)) <= 60
    header = next(i for i, ln in enumerate(lines) if ln.startswith("trial "))
    # the summary first (wrapped, not cut), then the running trial, its options narrow
    summary = " ".join(ln.strip() for ln in lines[:header])
    assert summary.startswith("grid: 2/15 done (1 completed, 1 diverged), 1 running, "
                              "12 pending; elapsed 3m2")
    assert running.trial_id in lines[header + 1] and "k=10/7" in lines[header + 1]
    assert lines[-1].startswith("... ") and "more: " in lines[-1]
    wide = render_lines(view, rec, 120, 40)
    assert len(wide) == 2 + 15 and "1023/1024 127/128 ls" in "\n".join(wide)
    rec.interrupted()   # Ctrl-C: what stays on the screen says pending, not running
    row = next(ln for ln in render_lines(view, rec, 120, 40) if running.trial_id in ln)
    assert " pending " in row and "running" not in row
