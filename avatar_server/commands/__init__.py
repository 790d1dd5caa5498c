"""Subcommands of `omnilive`; each module has `register(subparsers)` that sets `func(args) -> int`."""

COMMAND_MODULES: tuple[str, ...] = (
    "train",
    "eval",
    "synth",
    "prep",
    "render",
    "bench",
    "serve",
)
