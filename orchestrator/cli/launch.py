"""What `onorm run` and `onorm tune` share before and after Ray: their arguments, the
experiment they name, the dataset check, and the resolved experiment.yaml.

No torch or ray at import time: the dry runs stay instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from orchestrator.layout import ExperimentLayout
from trainers.cli_data import positive_int
from trainers.errors import UserError


def add_launch_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """The arguments `onorm run` and `onorm tune` share: which experiment, where, how wide."""
    p.add_argument("experiment", metavar="EXPERIMENT", help="an experiment name in the config")
    p.add_argument("--config", metavar="FILE", help="experiments file (default: "
                   "./experiments.yaml, else the one installed with onorm)")
    p.add_argument("--dry-run", action="store_true",
                   help=f"list the {what} and what has run so far; start nothing")
    p.add_argument("--address", metavar="ADDR", help="join this Ray cluster (default: "
                   "RAY_ADDRESS, else start Ray on this machine)")
    p.add_argument("--data-dir", metavar="DIR", help="dataset folder (overrides the config's)")
    p.add_argument("--results", metavar="DIR", default="results",
                   help="results root, a folder or a URI (s3://bucket/r, gs://..., "
                        "hdfs://...; docs/storage.md); files go to DIR/EXPERIMENT "
                        "(default: results)")
    p.add_argument("--max-concurrent", metavar="N", type=positive_int,
                   help="run at most N trials at once (default: the config's, else as "
                        "resources allow)")
    p.add_argument("--cpu-only", action="store_true",
                   help="ask for no GPU per trial (at least 1 CPU), for clusters without GPUs")
    p.add_argument("--log", metavar="TRACKER", action="extend", type=tracker_names, default=[],
                   help="also log every trial to mlflow (RESULTS/EXPERIMENT/mlruns, or "
                        "MLFLOW_TRACKING_URI) and/or wandb (offline, in RESULTS/EXPERIMENT/"
                        "wandb); repeat or separate by commas. TensorBoard event files are "
                        "always written to RESULTS/EXPERIMENT/tensorboard")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="change the experiment as if its file said so, checked the same way "
                        "(repeatable): settings.epochs=10, cells.online.seeds=2, "
                        "cells[0].afwd=511/512, resources.cpu=2; VALUE is YAML")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE,...",
                   help=f"run or list only the {what} matching every KEY=VALUE (norm, seed, "
                        "trial_id or a trial setting), e.g. norm=online,seed=0; repeated: "
                        "those matching any")


def tracker_names(text: str) -> list[str]:
    """`--log mlflow,wandb`: the optional trackers named (tensorboard is always on)."""
    from orchestrator.execute.trackers import OPTIONAL

    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in OPTIONAL and name != "tensorboard":
            raise argparse.ArgumentTypeError(
                f"unknown tracker {name!r}: choose from {', '.join(OPTIONAL)} "
                "(tensorboard is always written)")
    return names


def check_trackers(args: argparse.Namespace) -> list[str]:
    """The --log trackers, each one's package checked before anything starts."""
    from orchestrator.execute.trackers import check_available

    names = [n for n in dict.fromkeys(args.log) if n != "tensorboard"]
    check_available(names)
    return names


def load_launch(args: argparse.Namespace, kind: str):
    """(experiment, data_dir override or None, results root, experiments file) for `onorm
    run` / `onorm tune`; a UserError naming the right command when the experiment is of
    another kind. Only this experiment is checked; the file's others need only parse."""
    from orchestrator.plan.experiments import (
        default_config_path,
        get_experiment,
        load_experiments,
    )

    config = Path(args.config).absolute() if args.config else default_config_path()
    experiments = load_experiments(config)
    get_experiment(experiments, args.experiment)   # an unknown name, before any --set
    experiment = experiments.with_overrides(args.experiment, args.sets)
    if experiment.kind != kind:
        command = "run" if experiment.kind == "grid" else experiment.kind
        raise UserError(f"experiment {experiment.name!r} is a {experiment.kind} experiment: "
                        f"run it with `onorm {command} {experiment.name}`")
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None
    return experiment, data_dir, checked_root(args.results), config


def checked_root(text: str):
    """--results as a location (orchestrator/storage.py), its filesystem, bucket and
    credentials checked before anything is written or Ray starts."""
    from orchestrator import storage

    root = storage.results_root(text)
    storage.check_root(root)
    return root


def checked_trials(experiment, planned: list, args: argparse.Namespace,
                   show_plan: Callable[[list], None]) -> tuple[list, list[str]] | None:
    """What `onorm run` and `onorm tune` do between planning and Ray: narrow the planned
    trials by --only, then either show them (--dry-run: returns None) or make every check that
    can be made before Ray and prepare the data. Returns (trials, --log trackers)."""
    trials = narrow(experiment, planned, args)
    problem = check_data(experiment, trials)
    if args.dry_run:
        show_plan(trials)
        print_changes(experiment, len(planned), len(trials), args)
        print_recipe_notes(trials)
        if problem:
            print(f"warning: {problem}", file=sys.stderr)
        return None
    print_recipe_notes(trials)
    check_cluster(experiment, trials, args)
    log = check_trackers(args)
    check_devices(experiment, trials, args.address)
    check_plugins(experiment, trials)
    if not joining_cluster(args.address):
        # on a cluster the driver may host no trial: each node's data is checked (and
        # prepared) there before any trial starts (execute/preflight.py)
        prepare_data(experiment, trials, problem)
    return trials, log


def joining_cluster(address: str | None) -> bool:
    """True when Ray is an existing cluster (--address or RAY_ADDRESS), not started here."""
    from orchestrator.execute.runner import cluster_address

    return cluster_address(address) is not None


def check_cluster(experiment, trials, args: argparse.Namespace) -> None:
    """An address a driver cannot join, or folders inside a Ray job's temporary working
    folder: refused before Ray starts (cli/cluster.py). From here on SIGTERM stops the run
    as Ctrl-C does."""
    from orchestrator.cli.cluster import check_address, check_job_paths
    from orchestrator.execute.sigterm import take_sigterm_as_ctrl_c

    check_address(args.address, args.command, experiment.name)
    check_job_paths({"--results": args.results, "data_dir": trials[0].config.data_dir})
    take_sigterm_as_ctrl_c()


def narrow(experiment, trials, args: argparse.Namespace) -> list:
    """The trials that --only selects (all without it); a filter selecting none is an error."""
    from orchestrator.plan.overrides import parse_only, select

    return select(experiment.name, trials, [parse_only(text) for text in args.only])


def print_changes(experiment, total: int, selected: int, args: argparse.Namespace) -> None:
    """What --set and --only did, under the dry run's list."""
    for text in experiment.overrides:
        print(f"--set {text}")
    if args.only:
        only = " or ".join(f"--only {text}" for text in args.only)
        print(f"{only}: {selected} of {total} trials")


def print_recipe_notes(trials) -> None:
    """The lr and momentum each distinct recipe trains with, when the seed scripts' batch-size
    rule changes them (docs/train.md: no silent recipe change)."""
    from trainers.recipe import rescale_note

    notes = dict.fromkeys(n for n in (rescale_note(t.config) for t in trials) if n)
    for note in notes:
        print(f"note: {note}")


def check_devices(experiment, trials, address: str | None) -> None:
    """Trials pinned to a CUDA device need it on this machine when Ray runs here (no
    --address or RAY_ADDRESS). On a cluster the driver may have no GPU at all while the
    workers do, so there the trial's own node decides, and one without the device fails the
    trial at once with the reason (a UserError is never retried). The same for
    image_decoder gpu, which needs CUDA wherever the trial runs."""

    from orchestrator.plan.experiments import setting_key_path
    from orchestrator.plan.fields import where

    if joining_cluster(address):
        return
    pinned = sorted({t.config.device for t in trials if t.config.device.startswith("cuda")})
    nvjpeg = [t.config for t in trials if t.config.image_decoder == "gpu"]
    if not pinned and not nvjpeg:
        return
    import torch

    if nvjpeg and not torch.cuda.is_available():
        key = setting_key_path(experiment, "image_decoder", "gpu")
        raise UserError(f"{where(experiment.name, key)}: 'gpu' decodes JPEGs with nvJPEG on a "
                        "CUDA device, and this machine has none: use image_decoder pil, or "
                        "--address to run on a cluster whose nodes have CUDA")

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in pinned:
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            have = "no CUDA device" if not count else f"only {count} GPU(s)"
            key = setting_key_path(experiment, "device", device)
            raise UserError(f"{where(experiment.name, key)}: {device!r}, but this machine has "
                            f"{have}: use device auto or cpu, --cpu-only, or --address to "
                            "run on a cluster whose nodes have it")


def check_plugins(experiment, trials) -> None:
    """Import each plugin normalizer here and build one of its layers, so that a plugin that
    cannot load fails now, in one line, instead of in every trial after Ray started."""
    first = {}
    for t in trials:
        if t.config.norm_path:
            first.setdefault(t.config.norm_path, t.config)
    if not first:
        return
    from norms.plugins import PluginError
    from norms.registry import norm_factory
    from orchestrator.plan.experiments import setting_key_path
    from orchestrator.plan.fields import where
    from trainers.config import NORM_CHANNELS

    for path, config in first.items():
        network = config.arch if config.dataset == "imagenet" else "resnet"
        try:
            norm_factory(path)(min(NORM_CHANNELS[network]))
        except PluginError as err:
            key = setting_key_path(experiment, "norm", config.norm)
            raise UserError(f"{where(experiment.name, key)}: {err}") from None


def check_data(experiment, trials) -> str | None:
    """A problem with the dataset folder, or None (synthetic data is written when missing)."""
    if experiment.synthetic:
        return None
    from orchestrator.execute.preflight import data_problem

    problem = data_problem(experiment.dataset, trials[0].config.data_dir)
    return f"experiment {experiment.name!r}: {problem}" if problem else None


def fetch_cifar_once(experiment, trials) -> None:
    """Download CIFAR here, once, rather than in every trial at the same time."""
    from trainers.data.cifar_format import LAYOUTS

    layout = LAYOUTS.get(experiment.dataset)
    data_dir = Path(trials[0].config.data_dir)
    if layout is None or experiment.synthetic or (data_dir / layout.folder).is_dir():
        return
    from trainers.data.cifar import load_cifar

    load_cifar(data_dir, experiment.dataset)   # UserError when offline: names the fix


def prepare_data(experiment, trials, problem: str | None) -> None:
    """Refuse a missing dataset; fetch CIFAR or write the synthetic one, once, here."""
    if problem:
        raise UserError(problem)
    fetch_cifar_once(experiment, trials)
    if experiment.synthetic:
        from trainers.data.synthetic import ensure_synthetic_cifar

        ensure_synthetic_cifar(trials[0].config.data_dir, experiment.dataset, experiment.synthetic)


def write_resolved(experiment, trials, results_root, config: Path | None = None,
                   only: list[str] | tuple[str, ...] = ()) -> None:
    """experiment.yaml in the experiment folder: the experiment as resolved (with the --set
    overrides it was run with), the --only filters, every trial's config, and the experiments
    file it came from (for the command that rebuilds it)."""
    import yaml

    from orchestrator import storage

    resolved = experiment.to_dict()
    resolved["only"] = list(only)
    if config is not None:
        resolved["config"] = str(config)
    resolved["trials"] = [t.to_payload() for t in trials]
    storage.write_text(ExperimentLayout.of(results_root, experiment.name).resolved,
                       yaml.safe_dump(resolved, sort_keys=False))


def failed_hint(layout: ExperimentLayout) -> str:
    return (f"some trials failed: see the error column of {layout.trials}; re-run the same "
            "command to retry them")
