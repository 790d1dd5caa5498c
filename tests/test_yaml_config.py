"""The shared YAML -> pydantic loader and the model, training and studio loaders built on it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from model.config import load_model_config
from model.data.studio.config import StudioConfig, load_studio_config
from model.errors import InputError
from model.train.config import VaeTrainConfig, load_train_config
from model.yaml_config import load_yaml_config, parse_overrides, read_yaml_config

ROOT = Path(__file__).resolve().parent.parent


class _Run(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(1, gt=0)
    name: str = "run"


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: _Run = _Run()
    seed: int = 0


def test_parse_overrides_reads_yaml_values() -> None:
    assert parse_overrides(["run.steps=100", "data.framings=[face]", "model = tiny", "init_from=null"]) == {
        "run.steps": 100, "data.framings": ["face"], "model": "tiny", "init_from": None}
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_overrides(["run.steps"])
    with pytest.raises(InputError, match="run.steps: not a YAML value"):
        parse_overrides(["run.steps=[unclosed"])


def test_overrides_set_nested_keys(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  steps: 5\nseed: 3\n")
    config = load_yaml_config(_Config, path, "test config", overrides={"run.steps": 7, "run.name": "x"})
    assert config == _Config(run=_Run(steps=7, name="x"), seed=3)
    assert read_yaml_config(path, "test config", {"data.root": "d"})["data"] == {"root": "d"}
    with pytest.raises(InputError, match=r"cannot set seed\.x: seed is not a mapping"):
        read_yaml_config(path, "test config", {"seed.x": 1})
    assert load_yaml_config(_Config, path, "test config", defaults={"seed": 9}).seed == 3  # the file wins
    path.write_text("")
    assert load_yaml_config(_Config, path, "test config") == _Config()


def test_every_failure_names_the_file(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    with pytest.raises(InputError, match=f"test config not found: {re.escape(str(path))}"):
        load_yaml_config(_Config, path, "test config")
    path.write_text("run: [unclosed\n")
    with pytest.raises(InputError, match=f"test config {re.escape(str(path))} is not valid YAML"):
        load_yaml_config(_Config, path, "test config")
    path.write_bytes(b"seed: \xff\xfe\n")
    with pytest.raises(InputError, match="is not valid YAML"):
        load_yaml_config(_Config, path, "test config")
    path.write_text("- 1\n")
    with pytest.raises(InputError, match="must be a mapping at the top level, not list"):
        load_yaml_config(_Config, path, "test config")
    path.write_text("run:\n  steps: 0\n  nmae: x\nseed: many\n")
    with pytest.raises(InputError) as error:
        load_yaml_config(_Config, path, "test config")
    assert str(error.value).splitlines() == [
        f"test config {path} is invalid:",
        "  run.steps: Input should be greater than 0",
        "  run.nmae: Extra inputs are not permitted",
        "  seed: Input should be a valid integer, unable to parse string as an integer",
    ]


def test_model_config_errors_name_the_file_and_key(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "model" / "tiny.yaml").read_text() + "\nsampler_typo: 1\n")
    with pytest.raises(InputError, match=rf"model config {re.escape(str(bad))} is invalid:\n  sampler_typo: Extra"):
        load_model_config(bad)
    assert load_model_config(ROOT / "configs" / "model" / "tiny.yaml").name == "tiny"  # the file's stem by default


def test_train_config_loads_with_overrides_and_names_the_file(tmp_path) -> None:
    config = load_train_config(ROOT / "configs" / "train" / "vae-tiny.yaml", {"run.steps": 3, "data.root": "elsewhere"})
    assert isinstance(config, VaeTrainConfig) and config.run.steps == 3 and config.data.root == "elsewhere"
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: gan\n")
    with pytest.raises(InputError, match=f"training config {re.escape(str(bad))}: 'kind' must be"):
        load_train_config(bad)
    with pytest.raises(InputError, match=r"  run\.steps: Input should be greater than or equal to 0"):
        load_train_config(ROOT / "configs" / "train" / "vae-tiny.yaml", {"run.steps": -1})


def test_studio_config_defaults_and_file(tmp_path) -> None:
    assert load_studio_config(None) == StudioConfig()
    path = tmp_path / "studio.yaml"
    path.write_text("min_seconds: 1.0\nshort_side: 16\n")
    with pytest.raises(InputError, match=rf"studio config {re.escape(str(path))} is invalid:\n  short_side: "):
        load_studio_config(path)
    path.write_text("min_seconds: 1.0\n")
    assert load_studio_config(path) == StudioConfig(min_seconds=1.0)
