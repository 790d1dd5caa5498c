"""`omnilive bench <target>`: measurements; each target module registers its own sub-subcommand."""

from __future__ import annotations

import argparse

from avatar_server.commands import bench_serve
from omnilive_cli import bench_stream

BENCH_TARGETS = (bench_stream, bench_serve)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` parser and one sub-parser per module in BENCH_TARGETS."""
    parser = subparsers.add_parser("bench", help="measure speed and correctness", description="Benchmarks.")
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    for target in BENCH_TARGETS:
        target.register(targets)
