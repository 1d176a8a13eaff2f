"""`onorm train {cifar10,cifar100,imagenet} DIR`: the seed scripts' command line, on the shared trainer.

Every option of cifar10_main.py / cifar100_main.py / imagenet_main.py keeps its name, alias,
meaning and per-dataset default (paper/original_cli.md). No torch import here: the trainer is
imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from typing import Any

from trainers.decay import parse_fraction
from trainers.config import DATASETS, ECM_MODES, IMAGENET_ARCHS, NORM_MODES, NORM_WD_MODES

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


def _one_line_error(prog: str):
    """argparse's error, but one line with the fix instead of the usage block."""
    def error(message: str) -> None:
        print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
        sys.exit(2)
    return error


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train one model with the seed scripts' flags (no Ray)",
        description="Train a ResNet on CIFAR-10/100 or ImageNet with a chosen normalizer;\n"
                    "checkpoints and metrics.parquet go to --model-dir.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = _one_line_error(p.prog)  # type: ignore[method-assign]
    p.add_argument("dataset", choices=DATASETS, help="which dataset")
    p.add_argument("data_dir", metavar="DIR", help="dataset folder (CIFAR: the python "
                   "pickle batches; ImageNet: DIR/train and DIR/val image folders)")
    p.add_argument("--model-dir", default="./model_dir", metavar="DIR",
                   help="where checkpoints and metrics go (default ./model_dir)")
    p.add_argument("-a", "--arch", default=None, metavar="ARCH",
                   help=f"ImageNet architecture: {', '.join(IMAGENET_ARCHS)} "
                        "(default resnet18; CIFAR always uses its 6n+2 ResNet)")
    p.add_argument("-d", "--depth", type=int, default=None,
                   help="depth of the CIFAR ResNet, 6n+2 (default 20)")
    p.add_argument("-j", "--workers", type=int, default=None,
                   help="data loading workers (default 4)")
    p.add_argument("--epochs", type=int, default=None, help="total epochs")
    p.add_argument("--start-epoch", type=int, default=0,
                   help="manual epoch number (restarts): epochs to treat as done; a "
                        "--resume checkpoint's own epoch takes precedence (default 0)")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="mini-batch size")
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=None,
                   help="initial learning rate (default 0.1)")
    p.add_argument("--lr-milestones", type=int, nargs="+", default=None, metavar="E",
                   help="epochs after which the lr is multiplied by --lr-multiplier")
    p.add_argument("--lr-multiplier", type=float, default=None,
                   help="factor applied at each milestone (default 0.1)")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=None,
                   help="weight decay")
    p.add_argument("-p", "--print-freq", type=int, default=10,
                   help="print every N batches when no progress bar shows (default 10)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="checkpoint to resume from (a checkpoint.pth.tar or its folder)")
    p.add_argument("-e", "--evaluate", action="store_true",
                   help="evaluate on the validation set only and print the metrics")
    p.add_argument("--pretrained", action="store_true",
                   help="start from torchvision's ImageNet weights (batch norm only; the "
                        "file must be in the torch hub cache)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for initializing training; also makes kernels deterministic")
    p.add_argument("--norm-mode", dest="norm", choices=NORM_MODES, default=None,
                   help="normalizer (default batch)")
    p.add_argument("--afwd", "--decay-factor-forward", dest="afwd", type=_fraction,
                   default=None, help="Online Norm forward decay factor")
    p.add_argument("--abkw", "--decay-factor-backward", dest="abkw", type=_fraction,
                   default=None, help="Online Norm backward decay factor")
    p.add_argument("--ecm", choices=ECM_MODES, default=None,
                   help="Online Norm error compensation (default ls)")
    p.add_argument("--gn-num-groups", type=int, default=None, help="groups of group norm")
    p.add_argument("--norm-weight-decay", choices=NORM_WD_MODES, default=None,
                   help="weight decay on normalization parameters: exempt (none on any), "
                        "bias (only biases exempt, as the seed scripts did), none (decay "
                        "everywhere)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--synthetic-image-size", type=int, default=None, metavar="PX",
                   help="ImageNet-style folders with PX-pixel images instead of 224 "
                        "(small generated datasets)")
    p.set_defaults(func=run)
    return p


# CLI attribute -> TrialConfig field; None means "the dataset's default".
_CONFIG_ARGS = ("arch", "depth", "workers", "epochs", "batch_size", "lr", "lr_milestones",
                "lr_multiplier", "momentum", "weight_decay", "seed", "norm", "afwd", "abkw",
                "ecm", "gn_num_groups", "norm_weight_decay", "device", "synthetic_image_size")


def config_from_args(args: argparse.Namespace):
    """The TrialConfig the flags describe: per-dataset defaults, then the given flags."""
    from trainers.config import make_config
    overrides = {k: getattr(args, k) for k in _CONFIG_ARGS if getattr(args, k) is not None}
    if args.pretrained:
        overrides["pretrained"] = True
    return make_config(args.dataset, args.data_dir, **overrides)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from trainers.train import train
    outcome = train(config, model_dir=args.model_dir, resume=args.resume,
                    start_epoch=args.start_epoch or None, evaluate_only=args.evaluate,
                    print_freq=args.print_freq)
    if outcome.status == "diverged":
        print(f"onorm train: diverged at epoch {outcome.epochs_done} (training loss NaN/inf); "
              "lower --lr or change the normalizer", file=sys.stderr)
        return EXIT_DIVERGED
    if not args.evaluate and outcome.best_epoch is not None:
        print(f"best val acc1 {outcome.best_val_acc1:.2f} at epoch {outcome.best_epoch}; "
              f"checkpoints in {args.model_dir}")
    return 0
