"""Server settings (pydantic-settings): defaults here, a configs/server/*.yaml file and OMNILIVE_* variables over them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from model.errors import InputError
from model.yaml_config import describe_errors, read_yaml_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "server" / "default.yaml"
ENV_PREFIX = "OMNILIVE_"
ENV_NESTING = "__"
AUDIO_CATCH_UP = 0.05  # the outbound audio plays at most this much faster while it catches up with a shrinking delay


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#################################################################################
#                                   Sections                                    #
#################################################################################


class ModelSettings(_Section):
    """Which pipeline the engine runs."""

    weights: str | None = Field(default="weights/tiny", description="checkpoint folder (relative to the repo root)")
    config: str = Field(default="tiny", description="model config used when `weights` is missing")
    device: str = Field(default="auto", description="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:N'")
    torch_threads: int | None = Field(default=None, gt=0, description="intra-op threads; None keeps torch's default")
    steps: int | None = Field(default=None, gt=0, description="denoising steps; None: the model's default")
    decode_precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="the VAE decode's arithmetic; auto: bfloat16 where the device runs it natively "
                                    "(AVX-512 BF16 / AMX CPUs, CUDA), else float32")


class EngineSettings(_Section):
    """The device worker: batching and deadline-driven degradation."""

    max_batch: int = Field(default=8, gt=0, description="streams per generate call")
    min_steps: int = Field(default=1, gt=0, description="fewest steps before frames are held instead")
    deadline_margin_ms: float = Field(default=10.0, ge=0, description="safety margin on each chunk deadline")
    max_chunks_ahead: int = Field(default=2, gt=0, description="generated chunks a session may buffer")
    cost_smoothing: float = Field(default=0.3, gt=0, le=1, description="EWMA weight of the cost model's means")
    stage_window: int = Field(default=128, gt=0, description="chunks in each session's stage p50/p95")


class MediaSettings(_Section):
    """Outbound pacing, playout delay and A/V sync."""

    max_fps: int = Field(default=30, gt=0)
    max_width: int = Field(default=1280, gt=0)
    max_height: int = Field(default=1280, gt=0)
    initial_latency_ms: float = Field(default=300.0, gt=0, description="playout delay before it is measured")
    min_latency_ms: float = Field(default=80.0, gt=0)
    max_latency_ms: float = Field(default=800.0, gt=0, description="latency budget: beyond it, fewer steps, then held frames")
    latency_margin_ms: float = Field(default=40.0, ge=0, description="slack kept above the measured percentile")
    latency_decay_ms_per_s: float = Field(default=100.0, ge=0, description="how fast a delay above its target comes "
                                                                         "down while the avatar is silent")
    latency_speech_decay_ms_per_s: float = Field(
        default=20.0, ge=0, le=1000 * AUDIO_CATCH_UP, description="how fast a delay above its target comes down while "
        "the avatar speaks: the video skips a frame per frame time, the audio plays that much faster (at most "
        f"{AUDIO_CATCH_UP:.0%}) until it caught up; 0: only in silence")
    latency_target_window_s: float = Field(default=10.0, gt=0, description="seconds of chunks whose needed delay "
                                                                          "sets the playout delay's target")
    latency_target_percentile: float = Field(default=95.0, gt=0, le=100, description="the percentile of those "
                                             "chunks' needed delays the target follows (plus the margin)")
    av_sync_tolerance_ms: float = Field(default=30.0, gt=0, description="audio resyncs beyond this offset")
    input_jitter_ms: float = Field(default=100.0, ge=0, description="input gap before silence is fed")
    input_lead_ms: float = Field(default=200.0, ge=0, description="pushed audio fed ahead of the wall clock")
    live_input_max_lag_ms: float | None = Field(
        default=60.0, ge=0, description="a microphone's audio is fed as it arrives, never ahead, and at most this "
        "long behind the jitter allowance: after a gap its quiet parts are dropped until it is; None: fed like "
        "pushed audio (ahead by input_lead_ms, every gap adding to its delay)")
    mic_reorder_packets: int | None = Field(
        default=2, ge=0, lt=16, description="the microphone's RTP audio is decoded as soon as each packet is next in "
        "sequence; a missing packet is waited for while at most this many later ones arrived; None: aiortc's own "
        "buffer (each packet waits for 4 more, 80 ms)")
    live_input_quiet_rms: float = Field(default=0.003, ge=0, description="RMS below which a 20 ms part of "
                                                                        "microphone audio may be dropped to catch up")
    audio_history_s: float = Field(default=5.0, gt=0, description="pushed audio kept for the audio track")
    feed_interval_ms: float = Field(default=20.0, gt=0)
    idle_after_ms: float = Field(default=500.0, gt=0, description="no input for this long: state 'idle'")
    latency_window: int = Field(default=250, gt=0, description="frames in the per-session p50/p95")

    @model_validator(mode="after")
    def _check(self) -> "MediaSettings":
        if not self.min_latency_ms <= self.initial_latency_ms <= self.max_latency_ms:
            raise ValueError("need min_latency_ms <= initial_latency_ms <= max_latency_ms")
        if self.audio_history_s * 1000 <= self.max_latency_ms + self.input_lead_ms:
            raise ValueError("audio_history_s must exceed max_latency_ms + input_lead_ms")
        return self


class VADSettings(_Section):
    """silero-vad gating (one model per session)."""

    enabled: bool = True
    threshold: float = Field(default=0.5, gt=0, lt=1)
    min_silence_ms: float = Field(default=200.0, ge=0, description="hangover before speech ends")
    energy_floor: float = Field(default=1e-4, ge=0, description="RMS counted as voiced when VAD is disabled")


class SessionSettings(_Section):
    """Admission and lifetime of sessions."""

    max_sessions: int = Field(default=2, ge=0, description="set from measured capacity (bench serve --find-capacity)")
    retry_after_s: int = Field(default=10, gt=0)
    max_duration_s: float = Field(default=3600.0, gt=0)
    connect_timeout_s: float = Field(default=20.0, gt=0, description="ICE/DTLS must connect within this")
    reconnect_grace_s: float = Field(default=10.0, ge=0, description="after the events socket drops, the session "
                                     "ends unless its peer is still sending receiver reports")
    peer_timeout_s: float = Field(default=5.0, ge=2.0, description="no RTCP receiver report from a connected peer "
                                  "for this long: it vanished, the session ends (ICE consent alone takes 30 s)")
    stats_interval_s: float = Field(default=1.0, gt=0)
    max_creations_per_s: float = Field(default=10.0, gt=0, description="new sessions per second, all clients "
                                       "together (429 beyond): each costs the event loop ~10 ms of WebRTC setup")
    creation_burst: int = Field(default=40, gt=0, description="token-bucket depth of the creation rate")


class LimitSettings(_Section):
    """Sizes and rates accepted from clients."""

    max_body_bytes: int = Field(default=256 * 1024, gt=0, description="JSON request bodies")
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="avatar images")
    max_image_pixels: int = Field(default=16_000_000, gt=0)
    min_image_side: int = Field(default=64, gt=0)
    max_avatars: int = Field(default=100, gt=0)
    max_ws_message_bytes: int = Field(default=256 * 1024, gt=0)
    max_ws_messages_per_s: float = Field(default=200.0, gt=0)
    ws_burst: int = Field(default=400, gt=0, description="token-bucket depth of the message-rate limit")
    max_pending_audio_s: float = Field(default=60.0, gt=0, description="pushed audio not yet played")
    max_text_chars: int = Field(default=1000, gt=0)
    max_ws_sample_rate: int = Field(default=48000, gt=0)
    max_sdp_lines: int = Field(default=2000, gt=0, description="lines in an SDP offer")
    max_sdp_media: int = Field(default=8, gt=0, description="m= sections in an SDP offer")
    max_sdp_candidates: int = Field(default=100, ge=0, description="a=candidate lines in an SDP offer "
                                                                  "(aiortc's cost grows faster than linearly)")
    max_concurrent_decodes: int = Field(default=2, gt=0, description="avatar images decoded at the same time")
    reference_side: int = Field(default=1024, gt=0, description="decoded avatars are reduced to about this "
                                                               "shorter side before the reference is computed")


class HttpSettings(_Section):
    """Connection timeouts: slow or stalled clients lose their connection instead of holding it."""

    header_timeout_s: float = Field(default=10.0, gt=0, description="request line + headers must arrive within this")
    body_timeout_s: float = Field(default=30.0, gt=0, description="the whole body must arrive within this (408)")
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, description="idle time between requests")


class AuthSettings(_Section):
    """Bearer API keys and short-lived browser tokens; no keys means an open API."""

    api_keys: tuple[str, ...] = ()
    token_ttl_s: int = Field(default=600, gt=0, description="lifetime of client tokens (POST /v1/tokens)")
    session_token_ttl_s: int | None = Field(default=None, gt=0, description="lifetime of a session's own token; "
                                            "None: the session's max_duration_s (it dies with the session anyway)")
    token_secret: str | None = Field(default=None, description="HMAC secret; random per process when unset")
    protect_metrics: bool = Field(default=False, description="with api_keys set, /metrics needs an API key too")


class IceServer(_Section):
    """One STUN/TURN server handed to clients and used by the server's peer connections."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("urls"), str):
            data = {**data, "urls": [data["urls"]]}
        return data

    @model_validator(mode="after")
    def _check(self) -> "IceServer":
        for url in self.urls:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ValueError(f"ice server url must start with stun:, turn: or turns:, got {url!r}")
        return self


class ServerSettings(BaseSettings):
    """Everything `omnilive serve` reads: these defaults, a configs/server/*.yaml file over them, OMNILIVE_* over both."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_prefix=ENV_PREFIX,
                                      env_nested_delimiter=ENV_NESTING)

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    model: ModelSettings = ModelSettings()
    engine: EngineSettings = EngineSettings()
    media: MediaSettings = MediaSettings()
    vad: VADSettings = VADSettings()
    sessions: SessionSettings = SessionSettings()
    limits: LimitSettings = LimitSettings()
    http: HttpSettings = HttpSettings()
    auth: AuthSettings = AuthSettings()
    cors_origins: tuple[str, ...] = ()
    ice_servers: tuple[IceServer, ...] = ()
    default_avatar: str = "avatar_server/assets/default_avatar.png"
    client_dir: str = "client"

    def path(self, value: str) -> Path:
        """A settings path made absolute against the repository root."""
        path = Path(value)
        return path if path.is_absolute() else ROOT / path


#################################################################################
#                                    Loading                                    #
#################################################################################


class _YamlFile(YamlConfigSettingsSource):
    """The settings file, read like every other config (InputError naming the file)."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        return read_yaml_config(file_path, "server config")


class _YamlEnvironment(EnvSettingsSource):
    """OMNILIVE_<SECTION>__<KEY> variables of `environ`, each value parsed as YAML like the file's."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, Any]:
        fields = tuple(f"{ENV_PREFIX}{name}".lower() for name in self.settings_cls.model_fields)
        values: dict[str, Any] = {}
        for key, raw in self._environ.items():
            name = key.lower()
            if not any(name == field or name.startswith(field + ENV_NESTING) for field in fields):
                continue  # not a setting: OMNILIVE_CONFIG, OMNILIVE_SKIP_APT, ...
            try:
                values[name] = yaml.safe_load(raw)
            except yaml.YAMLError as error:
                raise InputError(f"environment variable {key}: not a YAML value ({error})") from error
        return values

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        return value  # parsed as YAML already


def _set_by(loc: tuple[int | str, ...], environ: Mapping[str, str]) -> str | None:
    """'set by VARIABLE' when an environment variable set the value at `loc` (or a section above it)."""
    names = {key.upper(): key for key in environ}
    for depth in range(len(loc), 0, -1):
        name = ENV_PREFIX + ENV_NESTING.join(str(part) for part in loc[:depth]).upper()
        if name in names:
            return f"set by {names[name]}"
    return None


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                  **overrides: Any) -> ServerSettings:
    """The field defaults, then the YAML file, then OMNILIVE_* variables, then keyword overrides (None: unset).

    `path` defaults to $OMNILIVE_CONFIG, else configs/server/default.yaml; InputError on any problem, one
    line per invalid key naming the variable that set it.
    """
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get("OMNILIVE_CONFIG") or DEFAULT_CONFIG)
    if not path.is_file():
        raise InputError(f"server config not found: {path}")
    given = {key: value for key, value in overrides.items() if value is not None}
    sources = (InitSettingsSource(ServerSettings, given), _YamlEnvironment(ServerSettings, environ),
               _YamlFile(ServerSettings, yaml_file=path))
    try:
        return ServerSettings(_build_sources=(sources, given))
    except ValidationError as error:
        raise InputError(describe_errors(error, f"invalid server settings ({path}):",
                                         lambda loc: _set_by(loc, environ))) from error
