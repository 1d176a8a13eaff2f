"""The `onorm` command: one subcommand per job, each defined beside the code it launches.

Subcommand modules are imported lazily and define `add_parser(subparsers)` without importing
torch or ray at module level, so `onorm run --dry-run` and `--help` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from trainers.errors import UserError

# (subcommand module, in the order shown by --help)
SUBCOMMAND_MODULES = (
    "trainers.cli_train",
    "trainers.cli_data",
    "orchestrator.cli.run",
    "orchestrator.cli.tune",
    "orchestrator.cli.report",
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except UserError as err:
        print(f"onorm {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"onorm {args.command}: interrupted; re-run the same command to resume",
              file=sys.stderr)
        return 130
    return int(code or 0)

