"""Where a result came from: the code's git commit and the versions of the packages that ran it."""

from __future__ import annotations

import functools
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchvision", "ray", "onorm")


def git_commit(repo: Path | None = None) -> str:
    """HEAD's hash, with '+dirty' when tracked files differ from it; '' outside a checkout."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty.strip() else "")


def package_versions() -> str:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = ""
    return json.dumps(versions, sort_keys=True)


def provenance() -> dict[str, str]:
    return dict(_provenance())


@functools.cache   # a process runs the code it imported: ask git once, not per attempt
def _provenance() -> dict[str, str]:
    return {"git_commit": git_commit(), "package_versions": package_versions()}
