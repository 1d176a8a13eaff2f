"""What a trial asks of the Ray cluster, and whether the cluster can give it.

A trial of one worker is one bundle (its cpu, gpu and custom resources). A trial of K
workers is a coordinating Tune trial (COORDINATOR plus the custom resources, which is how a
user keeps it on nodes that are not preempted) and K Ray Train workers placed by
`placement` (Ray's STRICT_PACK by default: every rank on one node).

What no node has is refused before anything runs when Ray runs on this machine (nothing can
be added to it). On a joined cluster an autoscaler may add nodes on demand, so there it is a
warning naming what is awaited, and the grid waits for it.
"""

from __future__ import annotations

from typing import Any, Callable

from trainers.errors import UserError

# The coordinating trial's request: Tune cannot place a trial that asks for nothing, and a
# CPU fraction would keep K workers from using all of a node's CPUs; a MiB of Ray's logical
# memory resource costs nothing (checked: such a Tune trial runs).
COORDINATOR = {"memory": 1024 * 1024}


def trial_bundle(resources: dict[str, Any]) -> dict[str, float]:
    """The resources Tune reserves for the trial itself."""
    custom = dict(resources.get("custom") or {})
    if int(resources.get("workers", 1)) > 1:
        # the trial only coordinates; Ray Train places its workers itself
        return {**COORDINATOR, **custom}
    return {"CPU": resources["cpu"], "GPU": resources["gpu"], **custom}


def worker_strategy(resources: dict[str, Any]) -> str:
    """Ray Train's placement strategy for a trial's K workers."""
    return str(resources.get("placement") or "strict_pack").upper()


def worker_slots(node: dict[str, float], cpu: float, gpu: float) -> int:
    """How many workers of (cpu, gpu) fit on a node with these resources."""
    slots = [int(node.get("CPU", 0) // cpu)] if cpu > 0 else []
    slots += [int(node.get("GPU", 0) // gpu)] if gpu > 0 else []
    return min(slots) if slots else 0


def shortfalls(trials, nodes: list[dict[str, float]]) -> list[str]:
    """What the trials ask that no alive node (or, for spread workers, no set of nodes) has,
    each as a short phrase naming the fix."""
    found: dict[str, str] = {}
    for t in trials:
        r = t.resources
        workers = int(r.get("workers", 1))
        if workers > 1:
            per = [worker_slots(n, r["cpu"], r["gpu"]) for n in nodes]
            strict = worker_strategy(r) == "STRICT_PACK"
            fits = max(per, default=0) if strict else sum(per)
            if fits < workers:
                where = "one node" if strict else "the cluster"
                found[f"w{workers}{r['cpu']}{r['gpu']}{strict}"] = (
                    f"trial {t.trial_id} asks for {workers} workers of {r['cpu']:g} CPU and "
                    f"{r['gpu']:g} GPU each, but {where} can place only {fits} at once "
                    f"(lower resources.workers or the per-worker cpu/gpu in experiments.yaml"
                    + (", or set resources.placement: spread" if strict else "") + ")")
        bundle = {k: v for k, v in trial_bundle(r).items() if v > 0 and k != "memory"}
        if not any(all(n.get(k, 0) >= v for k, v in bundle.items()) for n in nodes):
            missing = ", ".join(f"{v:g} {k}" for k, v in sorted(bundle.items())
                                if max((n.get(k, 0) for n in nodes), default=0) < v)
            if missing:
                found[missing] = (f"the trials ask for {missing} on one node, but no node has "
                                  "it (lower resources in experiments.yaml, or --cpu-only for "
                                  "GPUs)")
    return list(found.values())


def check_resources(trials, joined: bool, say: Callable[[str], None] | None = None) -> None:
    """Refuse (Ray on this machine) or announce and await (a joined cluster, which an
    autoscaler may grow) what no node can give the trials."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problems = shortfalls(trials, nodes)
    gpu = max(t.resources["gpu"] for t in trials)
    if not joined and gpu > 0 and not any(n.get("GPU", 0) for n in nodes):
        raise UserError(f"the trials ask for {gpu:g} GPU each but the Ray cluster has no GPUs: "
                        "re-run with --cpu-only (sets gpu to 0 per trial) or set "
                        "`resources: {gpu: 0}` in experiments.yaml")
    if not problems:
        return
    if not joined:
        raise UserError(problems[0] + "; or join a larger cluster with --address")
    for problem in problems:
        (say or print)(f"warning: {problem}; waiting for the cluster to add a node that has "
                       "it (an autoscaler does on demand; Ctrl-C stops)")
