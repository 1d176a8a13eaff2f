"""Where an `onorm run`/`onorm tune` driver may run on a cluster, checked before Ray starts.

A Tune driver must run on a node of the Ray cluster (Ray Jobs put it there): Ray Client
(`ray://`) is not for Tune (Ray ends its workload 30 s after the client goes away), and a
dashboard address (`http://HEAD:8265`) is where jobs are submitted, not a cluster to join.
Inside a Ray job started with `--working-dir`, the current folder is Ray's temporary copy of
that folder, deleted when the job ends: results or data there would be lost.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from trainers.errors import UserError

DASHBOARD_PORT = 8265   # Ray's default dashboard (job server) port
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"   # set by Ray's job supervisor for the entrypoint


def submit_command(address: str, command: str, experiment: str) -> str:
    """The `ray job submit` line that runs this command on the cluster at `address`."""
    parts = urlsplit(address)
    host = parts.hostname or "HEAD"
    if parts.scheme in ("http", "https"):
        dashboard = f"{parts.scheme}://{host}:{parts.port or DASHBOARD_PORT}"
    else:
        dashboard = f"http://{host}:{DASHBOARD_PORT}"
    return (f"ray job submit --address {dashboard} -- onorm {command} {experiment} "
            "[the same options, without --address]")


def check_address(address: str | None, command: str, experiment: str) -> None:
    """Refuse the addresses a driver cannot join (--address, else RAY_ADDRESS)."""
    from orchestrator.execute.runner import cluster_address

    given = cluster_address(address) or ""
    source = "--address" if address else "RAY_ADDRESS"
    scheme = urlsplit(given).scheme.lower() if "://" in given else ""
    if scheme == "ray":
        why = ("is a Ray Client address, which cannot run a Tune driver (Ray ends its work 30 s "
               "after the client disconnects)")
    elif scheme in ("http", "https"):
        why = "is a Ray dashboard address, where jobs are submitted, not a cluster to join"
    else:
        return
    raise UserError(f"{source} {given} {why}: submit onorm as a Ray job so that its driver runs "
                    f"on a cluster node: {submit_command(given, command, experiment)}")


def job_working_dir() -> Path | None:
    """The temporary copy of the job's working folder when this is a Ray job entrypoint
    submitted with --working-dir (the entrypoint runs inside it), else None."""
    text = os.environ.get(JOB_CONFIG_ENV)
    if not text:
        return None
    try:
        runtime_env = (json.loads(text) or {}).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return Path.cwd().resolve() if runtime_env.get("working_dir") else None


def check_job_paths(paths: dict[str, str | Path]) -> None:
    """Refuse results or data folders that resolve into a Ray job's working-folder copy.
    `paths` maps what each is ("--results", "data_dir") to where it resolved."""
    copy = job_working_dir()
    if copy is None:
        return
    for what, path in paths.items():
        if "://" in str(path):   # a URI is never in the copy
            continue
        resolved = Path(path).resolve()
        if resolved == copy or copy in resolved.parents:
            raise UserError(f"{what} {str(resolved)!r} is inside this Ray job's temporary copy "
                            f"of its --working-dir ({copy}), which Ray deletes when the job "
                            "ends: give an absolute path on the node (or a URI such as "
                            "s3://bucket/results)")
