"""Request and response bodies of the HTTP API (docs/architecture.md "Server API"), as they appear in /openapi.json."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from avatar_server.avatars import DEFAULT_AVATAR_ID
from avatar_server.events import SessionState

GUIDANCE_MAX = 20.0
MIN_SIDE = 16


class Guidance(BaseModel):
    audio: float | None = Field(default=None, ge=0, le=GUIDANCE_MAX)
    text: float | None = Field(default=None, ge=0, le=GUIDANCE_MAX)


class SessionRequest(BaseModel):
    """POST /v1/sessions."""

    model_config = ConfigDict(extra="ignore")
    sdp: str = Field(min_length=1)
    type: str = Field(default="offer", pattern="^offer$")
    avatar: str = DEFAULT_AVATAR_ID
    text: str | None = None
    fps: int | None = Field(default=None, gt=0)
    width: int | None = Field(default=None, ge=MIN_SIDE)
    height: int | None = Field(default=None, ge=MIN_SIDE)
    guidance: Guidance | None = None


class SessionResponse(BaseModel):
    """The answer to POST /v1/sessions; `token` only when auth is on (for the session's sockets)."""

    session_id: str
    sdp: str
    type: str = "answer"
    ice_servers: list[dict[str, Any]]
    events_url: str
    audio_url: str
    token: str | None = None


class SessionInfo(BaseModel):
    """GET /v1/sessions/{id}: a live session's state, its latest stats event and frame counters."""

    session_id: str
    state: SessionState
    avatar: str
    stats: dict[str, Any]
    frames_sent: int
    frames_generated_sent: int
    first_frame_s: float | None  # session created -> its first video frame sent, seconds


class IceServers(BaseModel):
    """GET /v1/ice-servers: `[{"urls": [...], "username"?, "credential"?}]` from the server config."""

    ice_servers: list[dict[str, Any]]


class AvatarInfo(BaseModel):
    """An avatar as clients see it (its `id` is what a session's `avatar` names)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    width: int
    height: int
    created: float
    builtin: bool


class AvatarList(BaseModel):
    avatars: list[AvatarInfo]


class ClientToken(BaseModel):
    """POST /v1/tokens: a short-lived token for a browser (Bearer header or `?token=` on sockets)."""

    token: str
    expires_in: int
