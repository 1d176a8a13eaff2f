"""`onorm data`: write small synthetic CIFAR / ImageNet datasets in the real on-disk formats."""

from __future__ import annotations

import argparse

from trainers.errors import UserError


def int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= minimum, else a one-line error naming `what`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
        return value
    return parse


positive_int = int_at_least(1, "positive")
_seed = int_at_least(0, "non-negative")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="write synthetic datasets for tests and demos",
        description="Write small, learnable synthetic datasets in the exact formats the "
                    "trainer reads (CIFAR python pickles, ImageNet-style image folders).")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="KIND")

    cifar = sub.add_parser("synth-cifar", help="CIFAR-10/100 pickle batches under DIR",
                           description="Write DIR/cifar-10-batches-py or DIR/cifar-100-python.")
    cifar.add_argument("dir", metavar="DIR", help="data directory (the trainer's data_dir)")
    cifar.add_argument("--classes", type=int, choices=(10, 100), default=10,
                       help="10 for CIFAR-10, 100 for CIFAR-100 (default 10)")
    cifar.add_argument("--train", type=positive_int, default=5000, metavar="N",
                       help="training images (default 5000)")
    cifar.add_argument("--test", type=positive_int, default=1000, metavar="M",
                       help="test images (default 1000)")
    cifar.add_argument("--seed", type=_seed, default=0, help="generator seed (default 0)")
    cifar.set_defaults(func=_run_cifar)

    imagenet = sub.add_parser("synth-imagenet", help="ImageNet-style train/ and val/ folders",
                              description="Write DIR/train/<class>/*.JPEG and "
                                          "DIR/val/<class>/*.JPEG.")
    imagenet.add_argument("dir", metavar="DIR", help="data directory (the trainer's data_dir)")
    imagenet.add_argument("--classes", type=positive_int, default=10, metavar="K",
                          help="number of classes, at least 2 (default 10)")
    imagenet.add_argument("--train", type=positive_int, default=50, metavar="N",
                          help="training images per class (default 50)")
    imagenet.add_argument("--val", type=positive_int, default=10, metavar="M",
                          help="validation images per class (default 10)")
    imagenet.add_argument("--image-size", type=positive_int, default=64, metavar="S",
                          help="image side in pixels; train with synthetic_image_size set to "
                               "at most this (default 64)")
    imagenet.add_argument("--seed", type=_seed, default=0, help="generator seed (default 0)")
    imagenet.set_defaults(func=_run_imagenet)


def _run_cifar(args: argparse.Namespace) -> int:
    from trainers.data.synthetic import write_synthetic_cifar

    folder = write_synthetic_cifar(args.dir, classes=args.classes, n_train=args.train,
                                   n_test=args.test, seed=args.seed)
    print(f"wrote synthetic CIFAR-{args.classes}: {args.train} train + {args.test} test "
          f"images of 32x32 in {folder} (seed {args.seed}); train with "
          f"dataset cifar{args.classes}, data_dir {args.dir}")
    return 0


def _run_imagenet(args: argparse.Namespace) -> int:
    from trainers.data.synthetic import write_synthetic_imagenet

    if args.classes < 2:
        raise UserError(f"--classes must be at least 2, got {args.classes}")
    root = write_synthetic_imagenet(args.dir, classes=args.classes,
                                    n_train_per_class=args.train, n_val_per_class=args.val,
                                    image_size=args.image_size, seed=args.seed)
    size = args.image_size
    print(f"wrote synthetic ImageNet: {args.classes} classes x ({args.train} train + "
          f"{args.val} val) JPEG images of {size}x{size} in {root}/train and {root}/val "
          f"(seed {args.seed}); train with dataset imagenet, data_dir {args.dir}, "
          f"synthetic_image_size {min(size, 224)} or less")
    return 0
