"""The `onorm` command: one subcommand per job, each defined beside the code it launches.

Subcommand modules are imported lazily and define `add_parser(subparsers)` without importing
torch or ray at module level, so `onorm run --dry-run` and `--help` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from trainers.errors import UserError

# 128 + SIGPIPE: what a shell reports for a command that a closed pipe ended
EXIT_BROKEN_PIPE = 141

# (subcommand module, in the order shown by --help)
SUBCOMMAND_MODULES = (
    "trainers.cli_train",
    "trainers.cli_data",
    "orchestrator.cli.run",
    "orchestrator.cli.tune",
    "orchestrator.cli.report",
    "orchestrator.cli.status",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onorm",
        description="Reproduce the Online Normalization paper: train, run grids on Ray, "
                    "tune decay factors, and tabulate results.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:   # argparse would report these with the top-level usage
        subcommand_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code = args.func(args)
        sys.stdout.flush()   # a closed pipe shows here, not at interpreter exit
    except UserError as err:
        print(f"onorm {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        hint = getattr(args, "resume_hint", None)
        print(f"onorm {args.command}: interrupted; "
              f"{hint(args, argv) if hint else 're-run the same command to resume'}",
              file=sys.stderr)
        from orchestrator.execute.sigterm import EXIT_TERMINATED, terminated

        return EXIT_TERMINATED if terminated() else 130
    except BrokenPipeError:
        # the reader went away (`onorm table X | head -1`): stop quietly, as `cat` does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return int(code or 0)


def subcommand_parser(parser: argparse.ArgumentParser, args: argparse.Namespace
                      ) -> argparse.ArgumentParser:
    """The innermost subcommand's parser that `args` went through (`onorm data synth-cifar`)."""
    while True:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or getattr(args, actions[0].dest, None) not in actions[0].choices:
            return parser
        parser = actions[0].choices[getattr(args, actions[0].dest)]
