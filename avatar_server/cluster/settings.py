"""Cluster settings (pydantic-settings): defaults here, configs/server/cluster.yaml and OMNILIVE_CLUSTER__* over them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, InitSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from avatar_server.settings import ROOT
from model.errors import InputError
from model.yaml_config import describe_errors, read_yaml_config

DEFAULT_CLUSTER_CONFIG = ROOT / "configs" / "server" / "cluster.yaml"
ENV_PREFIX = "OMNILIVE_CLUSTER__"
LOCAL = "local"


class WorkerResources(BaseModel):
    """What Ray reserves for each worker, and where its API listens on its node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_gpus: float = Field(default=1.0, ge=0, description="devices per worker (0: a CPU worker)")
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs Ray reserves per worker (scheduling only)")
    host: str | None = Field(default=None, description="bind address on the node; None: the node's IP")


class ClusterSettings(BaseSettings):
    """The pool behind `omnilive serve --cluster`: how many workers, their resources and the health checks."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    address: str = Field(default="auto", description="'auto', 'ray://HEAD:10001', or 'local' (Ray in this process)")
    workers: int = Field(default=2, gt=0)
    local_cpus: int | None = Field(default=None, gt=0, description="CPUs of a 'local' Ray instance (None: all)")
    worker: WorkerResources = WorkerResources()
    health_interval_s: float = Field(default=1.0, gt=0)
    health_timeout_s: float = Field(default=5.0, gt=0)
    start_timeout_s: float = Field(default=300.0, gt=0)
    proxy_timeout_s: float = Field(default=30.0, gt=0)


class _YamlFile(YamlConfigSettingsSource):
    """The cluster file, read like every other config (InputError naming the file)."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        return read_yaml_config(file_path, "cluster config")


def _environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """OMNILIVE_CLUSTER__<KEY>[__<SUBKEY>] variables, each value parsed as YAML, as nested keys."""
    import yaml

    values: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.upper().startswith(ENV_PREFIX):
            continue
        *parents, leaf = key[len(ENV_PREFIX):].lower().split("__")
        target = values
        for parent in parents:
            target = target.setdefault(parent, {})
        try:
            target[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise InputError(f"environment variable {key}: not a YAML value ({error})") from error
    return values


def load_cluster_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                          **overrides: Any) -> ClusterSettings:
    """The field defaults, then the YAML file (default configs/server/cluster.yaml), then OMNILIVE_CLUSTER__*
    variables, then keyword overrides (None: unset); InputError on any problem, one line per invalid key."""
    environ = os.environ if environ is None else environ
    path = Path(path or DEFAULT_CLUSTER_CONFIG)
    if not path.is_file():
        raise InputError(f"cluster config not found: {path}")
    given = {key: value for key, value in overrides.items() if value is not None}
    sources = (InitSettingsSource(ClusterSettings, given),
               InitSettingsSource(ClusterSettings, _environment(environ)),
               _YamlFile(ClusterSettings, yaml_file=path))
    try:
        return ClusterSettings(_build_sources=(sources, given))
    except ValidationError as error:
        raise InputError(describe_errors(error, f"invalid cluster settings ({path}):")) from error
