"""The `omnilive` command: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import logging
import os
import sys

# OpenMP threads that spin while they wait starve everything else on a small shared CPU
# (measured: a tiny-model chunk took 3.4-5 s instead of 0.18 s with 2 busy-waiting threads).
# Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from avatar_server.commands import serve
from model.errors import InputError
from omnilive_cli import bench, prep, render, synth, train
from omnilive_cli import eval as eval_command

logger = logging.getLogger("omnilive")

# Each module has `register(subparsers)`, which sets `func(args) -> int`; this order is the help's.
COMMANDS = (train, eval_command, synth, prep, render, bench, serve)


def build_parser() -> argparse.ArgumentParser:
    """Parser with every subcommand registered by its module."""
    parser = argparse.ArgumentParser(prog="omnilive", description="Real-time talking-body avatars.")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; bad input ends with a one-line message and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except InputError as error:
        print(f"omnilive {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

