"""A session's two sockets: events (state/stats/error out; interrupt, set_text, pose in) and audio (PCM16 in).

A socket authenticates when it opens (`?token=` or a Bearer header: an API key or its session's token); a
refusal is accepted and closed with a code a browser can read: 4401 no or wrong credential, 4403 a token for
something else, 4404 unknown session. An open socket closes with 1000 when its session ends and with 4401
when the token it opened with expires. Client mistakes are error events and the socket stays open; a bug in
handling a message ends the session (Session.fail).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from avatar_server.audio import PCM16Decoder
from avatar_server.events import INTERNAL_ERROR, Event, enqueue, error_event
from avatar_server.messages import (
    Clear,
    Flush,
    Interrupt,
    MessageError,
    Pose,
    SetText,
    parse_audio_message,
    parse_events_message,
)
from avatar_server.problems import Problem
from avatar_server.ratelimit import RateLimiter
from avatar_server.routes import API_PREFIX
from avatar_server.routes.dependencies import BEARER, State, credential
from avatar_server.server_state import ServerState
from avatar_server.session import Session
from avatar_server.text import check_text
from model.errors import InputError

WS_NORMAL = 1000
WS_POLICY_VIOLATION = 1008
WS_UNAUTHORIZED = 4401  # no/wrong credential at open; also sent when the socket's token expires while open
WS_FORBIDDEN = 4403     # a valid token for something else (a client token, another session's token)
WS_NOT_FOUND = 4404

router = APIRouter(prefix=f"{API_PREFIX}/sessions/{{session_id}}")


@router.websocket("/events")
async def events(ws: WebSocket, session_id: str, state: State) -> None:
    """State/stats/error events out; interrupt, set_text and pose in."""
    if (socket := await _open_socket(state, ws, session_id)) is None:
        return
    session = socket.session
    queue = session.attach()
    sender = asyncio.create_task(_send_events(ws, queue, socket.expires))
    try:
        while not sender.done() and (message := await _receive(ws)) is not None:
            try:
                reply = socket.over_limit(message) or _command(state, session, message)
            except Exception as error:  # noqa: BLE001 - a bug, not the client's message: logged, the session ends
                session.fail("events command", error)
                continue
            if reply is not None:
                enqueue(queue, reply)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        session.detach(queue)


@router.websocket("/audio")
async def audio(ws: WebSocket, session_id: str, state: State) -> None:
    """PCM16 LE mono binary messages at ?sample_rate=; {"type": "flush"} and {"type": "clear"}."""
    if (socket := await _open_socket(state, ws, session_id)) is None:
        return
    session, limits = socket.session, state.settings.limits
    rate_text = ws.query_params.get("sample_rate", "16000")
    if not rate_text.isdigit() or not 8000 <= int(rate_text) <= limits.max_ws_sample_rate:
        await ws.send_json(error_event("bad_sample_rate", f"sample_rate must be 8000..{limits.max_ws_sample_rate}"))
        await ws.close(code=WS_POLICY_VIOLATION)
        return
    decoder = PCM16Decoder(int(rate_text), session.rate)
    closer = asyncio.create_task(_close_when_ended(ws, session, socket.expires))
    try:
        while (message := await _receive(ws)) is not None:
            try:
                reply = socket.over_limit(message) or _audio(session, decoder, message)
            except Exception as error:  # noqa: BLE001 - a bug, not the client's message: logged, the session ends
                session.fail("audio message", error)
                reply = INTERNAL_ERROR
            if reply is not None and not await _send(ws, reply):
                break
    finally:
        closer.cancel()
        await asyncio.gather(closer, return_exceptions=True)


@dataclass
class OpenSocket:
    """A socket that passed its checks: its session, when its credential expires, its message limits."""

    session: Session
    expires: float | None  # wall clock (None: never)
    max_bytes: int
    limiter: RateLimiter

    def over_limit(self, message: dict[str, Any]) -> Event | None:
        """An error event when the message is over the size or rate limit (it is then dropped)."""
        size = len(message.get("bytes") or b"") + len((message.get("text") or "").encode())
        if size > self.max_bytes:
            return error_event("message_too_large", "message dropped")
        if not self.limiter.allow():
            return error_event("rate_limited", "message dropped")
        return None


async def _open_socket(state: ServerState, ws: WebSocket, session_id: str) -> OpenSocket | None:
    """Auth and session lookup; None when refused (the socket is then closed with its code)."""
    token = ws.query_params.get("token") or credential(await BEARER(ws))
    session = state.manager.sessions.get(session_id)
    try:
        grant = state.auth.check_session(token, session_id, state.live(session_id))
    except Problem as problem:
        code, reason = (WS_FORBIDDEN, "forbidden") if problem.status == 403 else (WS_UNAUTHORIZED, "unauthorized")
    else:
        if session is not None and not session.closed:
            await ws.accept()
            limits = state.settings.limits
            return OpenSocket(session, grant.expires, limits.max_ws_message_bytes,
                              RateLimiter(limits.max_ws_messages_per_s, limits.ws_burst))
        code, reason = WS_NOT_FOUND, "unknown session"
    await ws.accept()
    await ws.close(code=code, reason=reason)
    return None


def _command(state: ServerState, session: Session, message: dict[str, Any]) -> Event | None:
    """One client command on the events socket; an error event when it is unusable."""
    try:
        match parse_events_message(message.get("text")):
            case Interrupt():
                session.interrupt()
            case SetText(text=text):
                if text is not None:
                    check_text(text, "text", state.settings.limits.max_text_chars)
                session.set_text(text)
            case Pose() as pose:
                session.set_pose(pose.array(state.handle.pose_keypoints))
    except MessageError as error:
        return error_event(error.code, error.detail)
    except InputError as error:
        return error_event("bad_message", str(error))
    return None


def _audio(session: Session, decoder: PCM16Decoder, message: dict[str, Any]) -> Event | None:
    """One message on the audio socket: PCM16 bytes or a text command."""
    if message.get("bytes") is not None:
        try:
            pcm = decoder.decode(message["bytes"])
        except InputError as error:
            return error_event("bad_audio", str(error))
        if not session.put_audio(pcm):
            return error_event("buffer_full", "too much audio is pending; wait or send clear")
        return None
    try:
        command = parse_audio_message(message.get("text") or "")
    except MessageError as error:
        return error_event(error.code, error.detail)
    match command:
        case Flush():
            session.flush()
        case Clear():
            session.interrupt()
    return None


async def _receive(ws: WebSocket) -> dict[str, Any] | None:
    """The next message; None once the socket is gone (the client left, or another task closed it meanwhile:
    Starlette's RuntimeError). Only the socket's own call is guarded, so a bug in handling a message is never
    taken for a closed socket."""
    try:
        message = await ws.receive()
    except (WebSocketDisconnect, RuntimeError):
        return None
    return None if message["type"] == "websocket.disconnect" else dict(message)


async def _send(ws: WebSocket, event: Event) -> bool:
    """Send an event; False once the socket is gone."""
    try:
        await ws.send_json(event)
    except (WebSocketDisconnect, RuntimeError):
        return False
    return True


def _seconds_left(expires: float | None) -> float | None:
    """Seconds until a credential expires (None: never)."""
    return None if expires is None else max(0.0, expires - time.time())


async def _close_expired(ws: WebSocket) -> None:
    """Close a socket whose token expired: 4401, the client needs a fresh token."""
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await ws.close(code=WS_UNAUTHORIZED, reason="token expired")


async def _close_when_ended(ws: WebSocket, session: Session, expires: float | None) -> None:
    """Close a session's audio socket when the session ends (1000) or its token expires (4401)."""
    try:
        await asyncio.wait_for(session.ended.wait(), _seconds_left(expires))
    except asyncio.TimeoutError:
        await _close_expired(ws)
        return
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await ws.close(code=WS_NORMAL, reason="session ended")


async def _send_events(ws: WebSocket, queue: asyncio.Queue[Event | None], expires: float | None) -> None:
    """Forward a session's events until it closes (None, then 1000) or the socket's token expires (4401)."""
    while True:
        try:
            event = await asyncio.wait_for(queue.get(), _seconds_left(expires))
        except asyncio.TimeoutError:
            await _close_expired(ws)
            return
        if event is None:
            await ws.close(code=WS_NORMAL, reason="session ended")
            return
        await ws.send_text(json.dumps(event))
