"""Before any trial starts on a cluster, check every node that may host one.

The driver of a joined cluster may host no trial at all, so its own data check says nothing
about the nodes. Here a small task pinned to each alive node that can host a trial checks
the trials' data folder there (the checks the driver makes of its own disk when Ray runs
locally), prepares the data there when it can (a synthetic dataset, or CIFAR downloaded by
torchvision) once per node under a lock in the data folder, so that trials starting together
never download into one folder at once, and reports which code the node runs: onorm's
version with a hash of the source files its Python imports, torch's and ray's versions.
Nodes without data or with other code than the driver's are named in one line, before
anything is trained. Nodes an autoscaler adds later are not seen here; a trial there still
fails at once, without retries, when its data is missing (attempt.py).

No ray or torch at import time (the CLI's data check uses `data_problem`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import contextmanager
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Iterator

CODE_PACKAGES = ("norms", "trainers", "orchestrator")
LOCK_NAME = ".onorm-prepare.lock"
# a node that takes longer (a CIFAR download on a slow link) is reported as not answering
ANSWER_TIMEOUT_S = 1800
# (node id, data needs) already checked by this process: a search runs many batches
_checked: set[tuple[str, tuple]] = set()


def data_problem(dataset: str, data_dir: str | Path) -> str | None:
    """What is wrong with a (non-synthetic) dataset folder on this machine, or None."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return (f"data_dir {str(data_dir)!r} does not exist: put the {dataset} dataset there "
                "(for CIFAR an empty folder lets torchvision download it), or pass --data-dir "
                "DIR")
    if dataset == "imagenet":
        missing = [d for d in ("train", "val") if not (data_dir / d).is_dir()]
        if missing:
            return (f"data_dir {str(data_dir)!r} lacks {' and '.join(missing)}/: it must hold "
                    "train/ and val/ ImageFolders")
    return None


def source_hash() -> str:
    """A short hash of the .py files of onorm's packages, as this Python imports them."""
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        spec = find_spec(package)
        for root in (spec.submodule_search_locations or []) if spec else []:
            for path in sorted(Path(root).rglob("*.py")):
                digest.update(f"{package}/{path.relative_to(root).as_posix()}\0".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def code_identity() -> dict[str, str]:
    """What a node must share with the driver to run its trials the same way."""
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {"onorm": version("onorm"), "source": source_hash(), "torch": version("torch"),
            "ray": version("ray")}


@contextmanager
def data_lock(data_dir: Path) -> Iterator[None]:
    """Exclusive among this node's processes (flock on a file in the data folder); the OS
    drops it when its holder dies."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_data(dataset: str, data_dir: str, synthetic: dict[str, int] | None) -> str | None:
    """Check one data folder on this node and fill it when it can; a problem or None."""
    from trainers.data.cifar_format import LAYOUTS
    from trainers.errors import UserError

    folder = Path(data_dir)
    if synthetic:
        if not (folder / LAYOUTS[dataset].folder).exists():
            from trainers.data.synthetic import ensure_synthetic_cifar

            with data_lock(folder):
                ensure_synthetic_cifar(folder, dataset, synthetic)
        return None
    problem = data_problem(dataset, folder)
    layout = LAYOUTS.get(dataset)
    if problem or layout is None or (folder / layout.folder).is_dir():
        return problem
    with data_lock(folder):
        if (folder / layout.folder).is_dir():   # another process fetched it meanwhile
            return None
        from trainers.data.cifar import load_cifar

        try:
            load_cifar(folder, dataset)
        except UserError as err:
            return " ".join(str(err).split())
    return None


def inspect_node(needs: tuple) -> dict[str, Any]:
    """The task each node runs: its data problems (after preparing what it can) and code."""
    problems = [p for p in (prepare_data(d, f, dict(s) if s else None) for d, f, s in needs)
                if p]
    return {"problems": problems, "code": code_identity(), "pid": os.getpid()}


def data_needs(trials) -> tuple:
    """The distinct (dataset, data folder, synthetic size) of the trials, hashable."""
    return tuple(sorted({(t.config.dataset, t.config.data_dir,
                          tuple(sorted(t.synthetic.items())) if t.synthetic else None)
                         for t in trials}, key=repr))


def host_bundle(resources: dict[str, Any]) -> dict[str, float]:
    """What one trial (or one worker of a multi-worker trial) needs of a node to run there."""
    need = {"CPU": float(resources["cpu"]), "GPU": float(resources["gpu"])}
    if int(resources.get("workers", 1)) <= 1:
        need.update(resources.get("custom") or {})
    return {k: v for k, v in need.items() if v > 0}


def can_host(node_resources: dict[str, float], trials) -> bool:
    bundles = {tuple(sorted(host_bundle(t.resources).items())) for t in trials}
    return any(all(node_resources.get(k, 0) >= v for k, v in bundle) for bundle in bundles)


def node_label(node: dict[str, Any]) -> str:
    """`127.0.0.1 (id 3f2a9c1d)`, with the node's name when it has one other than its IP."""
    address = node.get("NodeManagerAddress", "?")
    name = node.get("NodeName") or ""
    named = f"{name}, " if name and name != address else ""
    return f"{address} ({named}id {node['NodeID'][:8]})"


def check_nodes(trials, say=None) -> list[str]:
    """Run the check on every alive node that can host one of the trials (once per process
    and node); a UserError naming each node that lacks the data or runs other code. Returns
    the labels of the nodes checked."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from trainers.errors import UserError

    needs = data_needs(trials)
    nodes = [n for n in ray.nodes() if n.get("Alive") and can_host(n.get("Resources", {}), trials)
             and (n["NodeID"], needs) not in _checked]
    if not nodes:
        return []
    if say is not None:
        say(f"checking the data and code of {len(nodes)} node(s) before any trial starts")
    task = ray.remote(num_cpus=0, max_retries=0)(inspect_node)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(needs) for n in nodes]
    here = code_identity()
    problems = []
    for node, ref in zip(nodes, refs):
        label = node_label(node)
        try:
            report = ray.get(ref, timeout=ANSWER_TIMEOUT_S)
        except Exception as err:   # a node that cannot import onorm, died, or hangs
            reason = " ".join(str(err).split())
            problems.append(f"{label}: its check failed ({reason[-200:]})")
            continue
        other = [f"{k} {report['code'][k]} (driver: {v})" for k, v in here.items()
                 if report["code"].get(k) != v]
        if other:
            problems.append(f"{label} runs other code: {', '.join(other)}")
        problems += [f"{label}: {p}" for p in report["problems"]]
        if not other and not report["problems"]:
            _checked.add((node["NodeID"], needs))
    if problems:
        raise UserError("before any trial started: " + "; ".join(problems) + " (install the "
                        "driver's onorm, torch and ray on every node and put the data at the "
                        "same path on each: see docs/cluster.md)")
    return [node_label(n) for n in nodes]
