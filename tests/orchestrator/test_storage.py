"""orchestrator/storage.py without a server: how a results root is spelled, URI paths, and
the local backend (which must behave as the files always did)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from orchestrator import storage
from orchestrator.layout import ExperimentLayout, combined_table
from orchestrator.storage import UriPath
from trainers.errors import UserError


def test_a_root_is_a_path_unless_it_is_a_remote_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.results_root("results") == tmp_path / "results"
    assert storage.results_root("~/r") == Path.home() / "r"
    assert storage.location("file:///mnt/nfs/my%20r") == Path("/mnt/nfs/my r")
    root = storage.results_root("s3://bucket/r/")
    assert isinstance(root, UriPath) and str(root) == "s3://bucket/r"
    assert storage.location("gs://b/x") == UriPath("gs://b/x")
    assert storage.is_remote(root) and not storage.is_remote(tmp_path)


def test_a_uri_path_has_the_path_operations_the_layout_uses():
    layout = ExperimentLayout.of("s3://bucket/r", "cifar10")
    assert str(layout.dir) == "s3://bucket/r/cifar10" and layout.name == "cifar10"
    assert str(layout.trial_store("abc")) == "s3://bucket/r/cifar10/checkpoints/abc"
    assert str(layout.metrics.parent) == "s3://bucket/r/cifar10"
    assert layout.metrics.with_name("x").name == "x"
    assert layout.dir.bucket == "bucket" and layout.dir.parts == ("s3://", "bucket", "r",
                                                                  "cifar10")
    assert [str(p) for p in layout.dir.parents] == ["s3://bucket/r", "s3://bucket"]
    assert str(combined_table("s3://bucket/r", ["a", "b"], "accuracy", ".md")) == \
        "s3://bucket/r/_tables/a+b/accuracy.md"
    # a local root keeps its Path (no id, path or message changes for local results)
    assert ExperimentLayout.of("/r", "x").dir == Path("/r/x")


def test_the_local_backend_reads_writes_lists_and_moves_aside(tmp_path):
    folder = tmp_path / "a" / "b"
    storage.write_text(folder / "x.json", "{}")
    assert storage.read_text(folder / "x.json") == "{}"
    assert (folder / "x.json").stat().st_mode & 0o777 == 0o644
    storage.write_parquet(folder / "m.parquet", pd.DataFrame({"a": [1]}))
    assert list(storage.read_parquet(folder / "m.parquet")["a"]) == [1]
    (folder / "sub").mkdir()
    assert storage.children(folder) == [("m.parquet", False), ("sub", True), ("x.json", False)]
    assert storage.children(tmp_path / "none") == []
    aside = storage.move_aside(folder / "x.json")
    assert aside.name.startswith("x.json.damaged-") and not (folder / "x.json").exists()
    storage.remove(folder / "x.json")   # nothing there: no error
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(folder / "x.json")
    storage.write_with(folder / "p.txt", lambda tmp: Path(tmp).write_text("plot"))
    assert (folder / "p.txt").read_text() == "plot"
    storage.check_root(tmp_path / "nothing-yet")   # a local root is created when written


def test_a_uri_without_a_bucket_or_a_filesystem_is_refused_in_one_line():
    with pytest.raises(UserError, match="names no bucket"):
        storage.check_root(storage.location("s3:///r"))
    with pytest.raises(UserError, match="no filesystem opens it") as err:
        storage.check_root(storage.location("nofs://bucket/r"))
    assert "\n" not in str(err.value)
