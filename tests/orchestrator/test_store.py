"""The trial store: checksummed checkpoints, the previous one kept, damage falls back."""

from __future__ import annotations

import json

from orchestrator.execute.store import TrialStore, checkpoint_name, read_state


def metrics(e: int) -> dict:
    return {"epoch": e, "val_acc1": 10.0 * e}


def stored(store: TrialStore, trial: str, epochs: int) -> None:
    store.begin(trial)
    for e in range(1, epochs + 1):
        store.put(trial, e, f"weights {e}".encode(), metrics(e))


def test_keeps_the_latest_two_checkpoints_with_their_checksums(tmp_path):
    store = TrialStore(tmp_path)
    stored(store, "t", 3)
    folder = tmp_path / "t"
    assert sorted(p.name for p in folder.glob("checkpoint*")) == [checkpoint_name(2),
                                                                 checkpoint_name(3)]
    state = read_state(folder)
    assert state["epoch"] == 3 and [c["epoch"] for c in state["checkpoints"]] == [3, 2]
    assert all(len(c["sha256"]) == 64 for c in state["checkpoints"])
    assert [m["epoch"] for m in state["history"]] == [1, 2, 3]
    assert store.begin("t") == {"attempt": 2, "epoch": 3, "checkpoint": b"weights 3"}


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    store = TrialStore(tmp_path)
    stored(store, "t", 3)
    latest = tmp_path / "t" / checkpoint_name(3)
    latest.write_bytes(latest.read_bytes()[:4])
    start = store.begin("t")
    assert (start["attempt"], start["epoch"], start["checkpoint"]) == (2, 2, b"weights 2")
    assert start["warning"] == ("trial t: the checkpoint of epoch 3 is damaged (4 bytes, "
                                "checksum mismatch): resuming from epoch 2's checkpoint; "
                                "epoch 3 is trained again")
    # the damaged file is kept aside, the history is untouched, the state now says epoch 2
    assert [p.name.split(".damaged-")[0] for p in (tmp_path / "t").glob("*.damaged-*")] == [
        checkpoint_name(3)]
    state = read_state(tmp_path / "t")
    assert state["epoch"] == 2 and state["start_epoch"] == 3 and len(state["history"]) == 3
    # retraining epoch 3 stores it again; the next start is clean
    store.put("t", 3, b"weights 3 again", metrics(3))
    assert store.begin("t") == {"attempt": 3, "epoch": 3, "checkpoint": b"weights 3 again"}


def test_no_intact_checkpoint_starts_at_epoch_one(tmp_path):
    store = TrialStore(tmp_path)
    stored(store, "t", 2)
    (tmp_path / "t" / checkpoint_name(2)).write_bytes(b"")
    (tmp_path / "t" / checkpoint_name(1)).unlink()
    start = store.begin("t")
    assert (start["epoch"], start["checkpoint"]) == (0, None)
    assert start["warning"] == ("trial t: the checkpoint of epoch 2 is damaged (0 bytes, "
                                "checksum mismatch); the checkpoint of epoch 1 is missing: no "
                                "intact checkpoint is left: training from epoch 1; epochs 1-2 "
                                "are trained again")
    assert read_state(tmp_path / "t")["epoch"] == 0


def test_a_store_from_before_checksums_resumes_unverified(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "checkpoint.pth.tar").write_bytes(b"old weights")
    (folder / "state.json").write_text(json.dumps(
        {"epoch": 4, "attempts": 1, "start_epoch": 1, "outcome": None, "history": []}))
    store = TrialStore(tmp_path)
    start = store.begin("t")
    assert start == {"attempt": 2, "epoch": 4, "checkpoint": b"old weights", "unverified": True}
    # the trainable found it does not load: set aside, nothing older to go back to
    again = store.discard("t", 4, "unreadable (UnpicklingError)")
    assert (again["attempt"], again["epoch"], again["checkpoint"]) == (2, 0, None)
    assert "epoch 4 is unreadable (UnpicklingError)" in again["warning"]
    assert not (folder / "checkpoint.pth.tar").exists()


def test_a_damaged_state_file_is_set_aside_and_its_checkpoints_still_found(tmp_path):
    store = TrialStore(tmp_path)
    stored(store, "t", 3)
    state_file = tmp_path / "t" / "state.json"
    state_file.write_bytes(state_file.read_bytes()[:30])
    assert read_state(tmp_path / "t")["damaged"]
    start = store.begin("t")
    assert (start["epoch"], start["checkpoint"], start["unverified"]) == (3, b"weights 3", True)
    assert "state.json is unreadable" in start["warning"]
    assert len(list((tmp_path / "t").glob("state.json.damaged-*"))) == 1
    assert read_state(tmp_path / "t")["attempts"] == 1   # counting starts again


def test_the_spec_is_kept_and_outcomes_recorded(tmp_path):
    store = TrialStore(tmp_path)
    store.begin("t", {"trial_id": "t", "config": {}}, {"host": "h", "git_commit": "abc"})
    store.finish("t", "failed", "data missing")
    assert store.spec("t") == {"trial_id": "t", "config": {}}
    state = store.state("t")
    assert (state["outcome"], state["error"], state["context"]["host"]) == (
        "failed", "data missing", "h")
    assert state["first_git_commit"] == "abc" and store.trial_ids() == ["t"]
