"""Checks for client text that is echoed, logged or handed to the model."""

from __future__ import annotations

from model.errors import InputError


def check_text(value: str, what: str, max_chars: int | None = None) -> str:
    """The text itself; InputError when it is too long or cannot be encoded as UTF-8 (lone surrogates)."""
    if max_chars is not None and len(value) > max_chars:
        raise InputError(f"{what} is longer than {max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} is not valid Unicode text (it contains a lone surrogate)") from None
    return value
