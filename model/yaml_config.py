"""One YAML -> pydantic loader for the model, training, studio and server configs.

Reads a YAML file, applies dotted command-line overrides (`run.steps=100`), validates into a
pydantic model and turns every failure into an InputError that names the file and, for invalid
values, each offending key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from model.errors import InputError

M = TypeVar("M", bound=BaseModel)
Loc = tuple[int | str, ...]


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """["run.steps=100", ...] -> {"run.steps": 100, ...}: `--set KEY=VALUE` arguments, values parsed as YAML."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise InputError(f"--set {key.strip()}: not a YAML value ({error})") from error
    return overrides


def read_yaml_config(path: str | Path, what: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The mapping in a YAML file (empty file: {}) with dotted `overrides` set into it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise InputError(f"{what} {path} is not valid YAML: {error}") from error
    except OSError as error:
        raise InputError(f"{what} {path} cannot be read: {error}") from error
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} must be a mapping at the top level, not {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for depth, key in enumerate(parents):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise InputError(f"{what} {path}: cannot set {dotted}: "
                                 f"{'.'.join(parents[:depth + 1])} is not a mapping")
        node[last] = value
    return data


def describe_errors(error: ValidationError, heading: str, origin: Callable[[Loc], str | None] | None = None) -> str:
    """`heading`, then one line per problem named by its dotted key (and `origin(loc)` when that names one)."""
    lines = [heading]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        source = origin(item["loc"]) if origin else None
        lines.append(f"  {key}{f' ({source})' if source else ''}: {item['msg']}")
    return "\n".join(lines)


def validate_config(schema: type[M], data: Mapping[str, Any], path: str | Path, what: str) -> M:
    """`schema` validated from `data` read out of `path`; InputError with one line per invalid key."""
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        raise InputError(describe_errors(error, f"{what} {path} is invalid:")) from error


def load_yaml_config(schema: type[M], path: str | Path, what: str, overrides: Mapping[str, Any] | None = None,
                     defaults: Mapping[str, Any] | None = None) -> M:
    """Read `path`, set the dotted `overrides`, fill top-level `defaults` the file leaves out, validate."""
    data = {**(defaults or {}), **read_yaml_config(path, what, overrides)}
    return validate_config(schema, data, path, what)
