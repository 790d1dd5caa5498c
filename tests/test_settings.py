"""Server settings: field defaults, a YAML file over them, OMNILIVE_* variables over both, keyword overrides last."""

from __future__ import annotations

import re

import pytest
import yaml

from avatar_server.settings import DEFAULT_CONFIG, ServerSettings, load_settings
from model.errors import InputError

DEFAULTS = ServerSettings.model_validate({})  # model_validate reads no file and no environment


def test_default_yaml_lists_every_default_and_sets_none() -> None:
    text = DEFAULT_CONFIG.read_text()
    uncommented = "\n".join(line[2:] if re.match(r"# *[a-z_]+:(\s|$)", line) else line for line in text.splitlines())
    assert yaml.safe_load(uncommented) == DEFAULTS.model_dump(mode="json"), "default.yaml disagrees with settings.py"
    assert load_settings(DEFAULT_CONFIG, environ={}) == DEFAULTS


def test_yaml_file_overrides_defaults_and_keeps_the_rest(tmp_path) -> None:
    config = tmp_path / "my.yaml"
    config.write_text("port: 9000\nsessions:\n  max_sessions: 4\nice_servers: [{urls: 'stun:stun.example.com:3478'}]\n")
    settings = load_settings(config, environ={})
    assert settings.port == 9000 and settings.sessions.max_sessions == 4
    assert settings.ice_servers[0].urls == ("stun:stun.example.com:3478",)
    assert settings.sessions.retry_after_s == DEFAULTS.sessions.retry_after_s and settings.media == DEFAULTS.media
    assert load_settings(environ={"OMNILIVE_CONFIG": str(config)}).port == 9000  # OMNILIVE_CONFIG names the file
    assert load_settings(DEFAULT_CONFIG, environ={"OMNILIVE_CONFIG": str(config)}).port == 8080  # a path wins


def test_environment_overrides_nested_keys_over_the_file(tmp_path) -> None:
    config = tmp_path / "my.yaml"
    config.write_text("model:\n  device: cpu\n  steps: 4\nsessions:\n  max_sessions: 4\n")
    environ = {
        "OMNILIVE_ENGINE__MIN_STEPS": "2",
        "OMNILIVE_MODEL__STEPS": "2",
        "OMNILIVE_MODEL__WEIGHTS": "null",
        "OMNILIVE_SESSIONS__MAX_SESSIONS": "6",
        "omnilive_sessions__retry_after_s": "7",  # names are case-insensitive
        "OMNILIVE_AUTH__API_KEYS": "[k1, k2]",  # values are YAML
        "OMNILIVE_CORS_ORIGINS": '["https://www.example.com"]',
        "OMNILIVE_VAD": "{enabled: false, threshold: 0.6}",  # a whole section
        "OMNILIVE_CHROMIUM": "/usr/bin/chromium", "OMNILIVE_SKIP_APT": "1",  # not settings: ignored
    }
    settings = load_settings(config, environ=environ)
    assert settings.engine.min_steps == 2 and settings.sessions.max_sessions == 6
    assert settings.sessions.retry_after_s == 7
    assert (settings.model.steps, settings.model.weights, settings.model.device) == (2, None, "cpu")
    assert settings.auth.api_keys == ("k1", "k2") and settings.cors_origins == ("https://www.example.com",)
    assert not settings.vad.enabled and settings.vad.threshold == 0.6
    assert settings.vad.min_silence_ms == DEFAULTS.vad.min_silence_ms


def test_keyword_overrides_win_and_merge_into_their_section(tmp_path) -> None:
    config = tmp_path / "my.yaml"
    config.write_text("port: 9000\nmodel:\n  device: cpu\n  torch_threads: 2\n")
    settings = load_settings(config, environ={"OMNILIVE_MODEL__DEVICE": "cuda", "OMNILIVE_PORT": "9001"},
                             port=None, model={"weights": "elsewhere"})
    assert settings.port == 9001  # None: not given
    assert (settings.model.weights, settings.model.device, settings.model.torch_threads) == ("elsewhere", "cuda", 2)
    assert load_settings(config, environ={}, model={"device": "cuda:1"}).model.device == "cuda:1"


def test_a_bad_value_names_the_file_the_key_and_the_variable(tmp_path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("media:\n  max_fps: 0\nsessions:\n  max_sesions: 2\n")
    with pytest.raises(InputError) as error:
        load_settings(config, environ={"OMNILIVE_ENGINE__MIN_STEPS": "0"})
    message = str(error.value)
    assert str(config) in message.splitlines()[0]
    assert "  media.max_fps: Input should be greater than 0" in message
    assert "  sessions.max_sesions: Extra inputs are not permitted" in message
    assert "  engine.min_steps (set by OMNILIVE_ENGINE__MIN_STEPS): Input should be greater than 0" in message
    with pytest.raises(InputError, match=r"sessions\.bogus \(set by OMNILIVE_SESSIONS__BOGUS\)"):
        load_settings(DEFAULT_CONFIG, environ={"OMNILIVE_SESSIONS__BOGUS": "1"})
    with pytest.raises(InputError, match="OMNILIVE_AUTH__API_KEYS: not a YAML value"):
        load_settings(DEFAULT_CONFIG, environ={"OMNILIVE_AUTH__API_KEYS": "[unclosed"})


def test_a_broken_file_is_named(tmp_path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("sessions: [unclosed\n")
    with pytest.raises(InputError, match=f"server config {re.escape(str(config))} is not valid YAML"):
        load_settings(config, environ={})
    config.write_text("- a list\n")
    with pytest.raises(InputError, match="must be a mapping"):
        load_settings(config, environ={})
    with pytest.raises(InputError, match="server config not found"):
        load_settings(tmp_path / "missing.yaml", environ={})
