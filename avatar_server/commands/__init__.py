"""The server's subcommands of `omnilive` (`serve`, `bench serve`); the others live in omnilive_cli.

Each module has `register(subparsers)` that sets `func(args) -> int`; omnilive_cli.main assembles them.
"""
