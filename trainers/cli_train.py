"""`onorm train {cifar10,cifar100,imagenet} DIR`: the seed scripts' command line, shared trainer.

Every option of cifar10_main.py / cifar100_main.py / imagenet_main.py keeps its name, alias,
meaning and per-dataset default; the settings' flags are made from TrialConfig's fields. No
torch import here: the trainer is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from trainers.config import DATASETS
from trainers.decay import parse_fraction

EXIT_DIVERGED = 3

EPILOG = f"""\
per-dataset defaults (cifar10 / cifar100 / imagenet): depth 20/20/-, epochs 250/250/90,
batch size 128/128/256, lr milestones 100 150 200 / 100 150 200 / 30 60 80 90, weight decay
2e-4/2e-4/1e-4, afwd 1023/1024 / 511/512 / 0.999, abkw 127/128 / 15/16 / 0.99,
gn groups 8/8/32, norm weight decay none/none/exempt.
lr and momentum are rescaled for batch sizes other than 128 (CIFAR) / 256 (ImageNet).

exit status: 0 trained (or evaluated), 2 bad input (one-line message),
{EXIT_DIVERGED} the training loss became NaN/inf (diverged), 130 interrupted (re-run with
--resume MODEL_DIR/checkpoint.pth.tar to continue)."""


def _fraction(text: str) -> float:
    """A float or a fraction such as 1023/1024 (how the paper writes decay factors)."""
    try:
        return parse_fraction(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 1023/1024, "
                                         f"got {text!r}") from None


def _norm_name(text: str) -> str:
    """A built-in normalizer or an installed plugin (norms/plugins.py), checked as parsed."""
    from norms.modes import NORM_MODES
    from norms.plugins import PluginError, plugin_path

    if text not in NORM_MODES:
        try:
            plugin_path(text)
        except PluginError as err:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} ({err})") from None
    return text


def _one_line_error(prog: str):
    """argparse's error, but one line with the fix instead of the usage block."""
    def error(message: str) -> None:
        print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
        sys.exit(2)
    return error


# The seed scripts' names for TrialConfig fields (other fields get --field-name); every field
# but dataset and data_dir is a flag, typed, checked and documented by its TrialConfig field.
FLAG_NAMES = {
    "arch": ("-a", "--arch"), "depth": ("-d", "--depth"), "workers": ("-j", "--workers"),
    "batch_size": ("-b", "--batch-size"), "lr": ("--lr", "--learning-rate"),
    "weight_decay": ("--wd", "--weight-decay"), "norm": ("--norm-mode",),
    "afwd": ("--afwd", "--decay-factor-forward"), "abkw": ("--abkw", "--decay-factor-backward"),
}
POSITIONAL = ("dataset", "data_dir")


def config_flags(name: str) -> tuple[str, ...]:
    return FLAG_NAMES.get(name, ("--" + name.replace("_", "-"),))


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per TrialConfig field, its type and choices read off the field; every
    default is None, meaning "the dataset's default" (ranges are checked by the config)."""
    from trainers.config import config_specs

    for name, spec in config_specs().items():
        if name in POSITIONAL or spec.derived:
            continue
        kw: dict[str, Any] = dict(dest=name, default=None, help=spec.meta.get("help") or None)
        if name == "norm":   # a built-in, or a plugin's name or path
            kw.update(type=_norm_name, metavar="NORM")
        elif spec.kind == "bool":
            kw.update(action="store_true")
        elif spec.kind == "choice":
            kw.update(choices=spec.choices)
        elif spec.kind == "int_list":
            kw.update(type=int, nargs="+", metavar="N")
        else:
            kw.update(type={"int": int, "float": _fraction, "str": str}[spec.kind])
        p.add_argument(*config_flags(name), **kw)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train one model with the seed scripts' flags (no Ray)",
        description="Train a ResNet on CIFAR-10/100 or ImageNet with a chosen normalizer;\n"
                    "checkpoints and metrics.parquet go to --model-dir.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = _one_line_error(p.prog)  # type: ignore[method-assign]
    # optional only with --resume, whose checkpoint knows the dataset and its folder
    p.add_argument("dataset", nargs="?", choices=DATASETS,
                   help="which dataset (with --resume: the checkpoint's by default)")
    p.add_argument("data_dir", nargs="?", metavar="DIR", help="dataset folder (CIFAR: the "
                   "python pickle batches; ImageNet: DIR/train and DIR/val image folders; with "
                   "--resume: the checkpoint's by default)")
    p.add_argument("--model-dir", default=None, metavar="DIR",
                   help="where checkpoints and metrics go (default ./model_dir, with --resume "
                        "the checkpoint's folder)")
    p.add_argument("--start-epoch", type=int, default=0,
                   help="manual epoch number (restarts): epochs to treat as done; a "
                        "--resume checkpoint's own epoch takes precedence (default 0)")
    p.add_argument("-p", "--print-freq", type=int, default=10,
                   help="print every N batches when no progress bar shows (default 10)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="checkpoint to resume from (a checkpoint.pth.tar or its folder); alone "
                        "it continues the run with the checkpoint's model and recipe, and any "
                        "flag given must agree with them")
    p.add_argument("-e", "--evaluate", action="store_true",
                   help="evaluate on the validation set only and print the metrics")
    add_config_arguments(p)
    p.set_defaults(func=run, resume_hint=resume_hint)
    return p


def resume_hint(args: argparse.Namespace, argv: list[str]) -> str:
    """After Ctrl-C: the command that continues this run from its latest checkpoint (the
    same flags, --resume pointing at the model dir's checkpoint)."""
    import shlex
    from pathlib import Path

    from trainers.checkpoint import CHECKPOINT_NAME

    checkpoint = Path(model_dir_of(args)) / CHECKPOINT_NAME
    if args.evaluate or not checkpoint.is_file():
        return "no epoch was checkpointed yet: re-run the same command to start again"
    kept, skip = [], False
    for token in argv:
        flag = token.split("=", 1)[0]
        if skip:
            skip = False
        elif len(flag) >= 3 and "--resume".startswith(flag):   # argparse takes prefixes
            skip = "=" not in token
        else:
            kept.append(token)
    return f"resume with: onorm {shlex.join(kept + ['--resume', str(checkpoint)])}"


def model_dir_of(args: argparse.Namespace) -> str:
    """--model-dir; without it the folder of the --resume checkpoint, else ./model_dir."""
    if args.model_dir:
        return args.model_dir
    if args.resume:
        from pathlib import Path

        resume = Path(args.resume)
        return str(resume if resume.is_dir() else resume.parent)
    return "./model_dir"


def config_from_args(args: argparse.Namespace, saved: dict[str, Any] | None = None):
    """The TrialConfig the flags describe: per-dataset defaults (or the `saved` config of the
    checkpoint to resume), then the flags given."""
    from trainers.config import config_specs, make_config
    from trainers.errors import UserError

    specs = config_specs()
    given = {k: getattr(args, k) for k, spec in specs.items()
             if k not in POSITIONAL and not spec.derived}
    # None: not given; False: a switch left off (`is`, since 0 == False for --workers 0)
    overrides = {k: v for k, v in given.items() if v is not None and v is not False}
    saved = saved or {}
    dataset, data_dir = args.dataset or saved.get("dataset"), args.data_dir or saved.get(
        "data_dir")
    if dataset is None or data_dir is None:
        raise UserError("give the dataset and its folder (onorm train DATASET DIR ...), or "
                        "--resume CHECKPOINT to continue a run")
    # a checkpoint of another version may lack a field or have one no longer known
    values = {k: v for k, v in saved.items() if k in specs and k not in POSITIONAL
              and not specs[k].derived}
    return make_config(dataset, data_dir, **{**values, **overrides})


def saved_config(path: str) -> dict[str, Any]:
    """The config a checkpoint was saved with (one line when it is missing or damaged)."""
    from trainers.checkpoint import load_checkpoint

    config = load_checkpoint(path)["config"]
    return config if isinstance(config, dict) else {}


def run(args: argparse.Namespace) -> int:
    """Train; under `torchrun --nproc-per-node K` the K processes train one run together
    (rank 0 writes the model dir and prints)."""
    # resuming: the model and recipe are the checkpoint's, and flags given must agree
    config = config_from_args(args, saved_config(args.resume) if args.resume else None)
    from trainers import distributed
    from trainers.train import train

    model_dir = model_dir_of(args)
    started = distributed.init_from_env()
    try:
        outcome = train(config, model_dir=model_dir, resume=args.resume,
                        start_epoch=args.start_epoch or None, evaluate_only=args.evaluate,
                        print_freq=args.print_freq)
        main = distributed.current().is_main
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    if outcome.status == "diverged":
        if main:
            print(f"onorm train: diverged at epoch {outcome.epochs_done} (training loss "
                  "NaN/inf); lower --lr or change the normalizer", file=sys.stderr)
        return EXIT_DIVERGED
    if main and not args.evaluate and outcome.best_epoch is not None:
        print(f"best val acc1 {outcome.best_val_acc1:.2f} at epoch {outcome.best_epoch}; "
              f"checkpoints in {model_dir}")
    return 0
