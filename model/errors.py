"""Errors that describe bad user input (the CLI prints them; the server maps them to 4xx)."""


class InputError(ValueError):
    """Input the user gave cannot be used; the message says why and is shown as is."""
