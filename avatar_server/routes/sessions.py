"""Sessions: create one from an SDP offer, read or end it, and the ICE servers to offer with."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Response

from avatar_server.problems import Problem
from avatar_server.routes import API_PREFIX
from avatar_server.routes.dependencies import State, authorized, session_owner
from avatar_server.schemas import MIN_SIDE, IceServers, SessionInfo, SessionRequest, SessionResponse
from avatar_server.server_state import ServerState
from avatar_server.session import Session, SessionOptions
from avatar_server.text import check_text
from model.errors import InputError

router = APIRouter(prefix=API_PREFIX, tags=["sessions"], dependencies=[Depends(authorized)])
owner_router = APIRouter(prefix=f"{API_PREFIX}/sessions/{{session_id}}", tags=["sessions"],
                         dependencies=[Depends(session_owner)])


def frame_size(width: int | None, height: int | None, model_width: int, model_height: int) -> tuple[int, int]:
    """The asked size, a missing side from the model's aspect ratio (both missing: the model's size), rounded down
    to even sides (yuv420)."""
    if width is not None and height is not None:
        size = width, height
    elif width is not None:
        size = width, int(round(width * model_height / model_width))
    elif height is not None:
        size = int(round(height * model_width / model_height)), height
    else:
        size = model_width, model_height
    return size[0] - size[0] % 2, size[1] - size[1] % 2


def session_options(state: ServerState, body: SessionRequest) -> SessionOptions:
    """Fill defaults from the model and check the client's asks against the limits."""
    cfg, media, limits = state.handle.pipe.config, state.settings.media, state.settings.limits
    fps = body.fps or int(cfg.fps)
    if fps > media.max_fps:
        raise Problem(422, f"fps {fps} is over the limit of {media.max_fps}", code="invalid_options")
    width, height = frame_size(body.width, body.height, int(cfg.width), int(cfg.height))
    if width > media.max_width or height > media.max_height or min(width, height) < MIN_SIDE:
        raise Problem(422, f"size {width}x{height} is outside {MIN_SIDE}..{media.max_width}x{media.max_height}",
                      code="invalid_options")
    if body.text is not None:
        try:
            check_text(body.text, "text", limits.max_text_chars)
        except InputError as error:
            raise Problem(422, str(error), code="invalid_options") from None
    guidance = body.guidance.model_dump(exclude_none=True) if body.guidance else None
    return SessionOptions(avatar=body.avatar, fps=fps, width=width, height=height, text=body.text,
                          guidance=guidance or None)


def session_token(state: ServerState, session: Session) -> str | None:
    """The answer's token: good for this session only, until it ends (or session_token_ttl_s)."""
    if state.auth.open:
        return None
    ttl = state.settings.auth.session_token_ttl_s or state.settings.sessions.max_duration_s
    return state.auth.issue_session(session.id, time.time() + ttl)


@router.get("/ice-servers")
async def ice_servers(state: State) -> IceServers:
    """STUN/TURN servers to use in the offer."""
    return IceServers(ice_servers=state.manager.ice_servers())


@router.post("/sessions", status_code=201, response_model=SessionResponse,
             responses={400: {"description": "unusable SDP"}, 404: {"description": "unknown avatar"},
                        503: {"description": "no free session slot (see Retry-After)"}})
async def create_session(body: SessionRequest, response: Response, state: State) -> SessionResponse:
    """Start a session: SDP offer + options -> SDP answer."""
    options = session_options(state, body)
    avatar = state.avatars.get(body.avatar)
    session, sdp = await state.manager.create(body.sdp, options, avatar)
    base = f"{API_PREFIX}/sessions/{session.id}"
    response.headers["Location"] = base
    return SessionResponse(session_id=session.id, sdp=sdp, ice_servers=state.manager.ice_servers(),
                           events_url=f"{base}/events", audio_url=f"{base}/audio",
                           token=session_token(state, session))


@owner_router.get("")
async def get_session(session_id: str, state: State) -> SessionInfo:
    """State and stats of a live session."""
    session = state.manager.get(session_id)
    counters = session.counters
    first = None if counters.first_frame_at is None else round(counters.first_frame_at - session.created, 3)
    return SessionInfo(session_id=session.id, state=session.state, avatar=session.options.avatar,
                       stats=session.stats(), frames_sent=counters.frames_sent,
                       frames_generated_sent=counters.frames_generated_sent, first_frame_s=first)


@owner_router.delete("", status_code=204)
async def delete_session(session_id: str, state: State) -> Response:
    """End a session and free everything it holds."""
    await state.manager.get(session_id).close("deleted")
    return Response(status_code=204)
