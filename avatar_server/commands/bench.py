"""`omnilive bench <target>`: measurements; each target module registers its own sub-subcommand."""

from __future__ import annotations

import argparse
import importlib

BENCH_TARGETS: tuple[str, ...] = ("bench_stream", "bench_serve")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` parser and one sub-parser per module in BENCH_TARGETS."""
    parser = subparsers.add_parser("bench", help="measure speed and correctness", description="Benchmarks.")
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    for name in BENCH_TARGETS:
        importlib.import_module(f"avatar_server.commands.{name}").register(targets)
