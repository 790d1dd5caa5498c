"""The ASGI app: HTTP, WebSocket and WebRTC routes of docs/architecture.md "Server API"."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import numpy as np
from fastapi import Depends, FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from avatar_server.audio import PCM16Decoder
from avatar_server.auth import Authenticator, Grant, bearer
from avatar_server.avatars import DEFAULT_AVATAR_ID, AvatarStore
from avatar_server.engine import Engine
from avatar_server.http import BodyLimit
from avatar_server.metrics import Metrics
from avatar_server.origins import PublicAssets, WriteGuard
from avatar_server.problems import Problem, install_problem_handlers, problem_response
from avatar_server.ratelimit import RateLimiter
from avatar_server.runtime import PipelineHandle
from avatar_server.session import INTERNAL_ERROR, Session, SessionOptions
from avatar_server.sessions import SessionManager
from avatar_server.settings import ServerSettings
from avatar_server.text import check_text
from avatar_server.vad import VoiceWorker
from model.errors import InputError

logger = logging.getLogger(__name__)

API_VERSION = "v1"
GUIDANCE_MAX = 20.0
MIN_SIDE = 16
WS_POLICY_VIOLATION = 1008
WS_NORMAL = 1000
WS_UNAUTHORIZED = 4401  # no/wrong credential at open; also sent when the socket's token expires while open
WS_FORBIDDEN = 4403     # a valid token for something else (a client token, another session's token)
WS_NOT_FOUND = 4404


#################################################################################
#                                 Request bodies                                #
#################################################################################


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
    session_id: str
    sdp: str
    type: str = "answer"
    ice_servers: list[dict[str, Any]]
    events_url: str
    audio_url: str
    token: str | None = None


#################################################################################
#                                   The app                                     #
#################################################################################


@dataclass
class ServerState:
    """Everything the routes share (app.state.server)."""

    settings: ServerSettings
    handle: PipelineHandle
    engine: Engine
    voice: VoiceWorker
    avatars: AvatarStore
    manager: SessionManager
    metrics: Metrics
    auth: Authenticator
    ready: bool = False


def _torch_threads(settings: ServerSettings) -> int:
    """The engine's intra-op threads: configured, else torch's default (read before silero-vad's import,
    which sets the importing thread to 1)."""
    import torch  # noqa: PLC0415

    threads = settings.model.torch_threads or torch.get_num_threads()
    import silero_vad  # noqa: F401, PLC0415

    return threads


def _freeze_startup_objects() -> None:
    """Keep what exists at start (modules, the model: half a million objects and more) out of later collections.

    A full collection walks every tracked object on the event loop thread: under session churn (each session
    leaves ~1,700 objects in reference cycles) one ran every ~2 s and paused the loop, and every live session's
    video, for 350-550 ms; without the startup objects the longest pause measured 72 ms."""
    gc.collect()
    gc.freeze()


def create_app(settings: ServerSettings, handle: PipelineHandle) -> FastAPI:
    """The FastAPI app around a loaded pipeline (see runtime.load_pipeline / runtime.fake_pipeline)."""
    metrics = Metrics()
    engine = Engine(handle.pipe, settings.engine, steps=settings.model.steps, observer=metrics)
    voice = VoiceWorker(settings.vad)
    state = ServerState(settings=settings, handle=handle, engine=engine, voice=voice,
                        avatars=AvatarStore(handle.pipe, settings.limits),
                        manager=SessionManager(settings, engine, voice, handle, metrics), metrics=metrics,
                        auth=Authenticator(settings.auth))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        default = settings.path(settings.default_avatar)
        try:
            await state.avatars.add(default.read_bytes(), "default", avatar_id=DEFAULT_AVATAR_ID, builtin=True)
        except (OSError, Problem) as error:
            raise InputError(f"default avatar {default} is unusable: {error}") from error
        engine.start(_torch_threads(settings))
        voice.start()
        _freeze_startup_objects()
        state.ready = True
        logger.info("omnilive server ready: model %s, up to %d sessions", handle.source, settings.sessions.max_sessions)
        try:
            yield
        finally:
            state.ready = False
            await state.manager.close_all("shutdown")
            await asyncio.to_thread(voice.stop)
            await asyncio.to_thread(engine.stop)
            gc.unfreeze()

    app = FastAPI(title="omnilive", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Real-time talking-body avatars over WebRTC. Errors are application/problem+json.")
    app.state.server = state
    install_problem_handlers(app)
    app.add_middleware(WriteGuard, allowed_origins=settings.cors_origins)  # inside BodyLimit: limits and timeouts first
    app.add_middleware(BodyLimit, default=settings.limits.max_body_bytes, uploads=settings.limits.max_upload_bytes,
                       upload_path=f"/{API_VERSION}/avatars", timeout_s=settings.http.body_timeout_s)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["Location", "Retry-After", "Link"])

    def authorized(request: Request) -> None:
        state.auth.check(bearer(request.headers.get("authorization")))

    def key_only(request: Request) -> None:
        state.auth.check(bearer(request.headers.get("authorization")), key_only=True)

    def session_owner(request: Request, session_id: str) -> None:
        state.auth.check_session(bearer(request.headers.get("authorization")), session_id,
                                 _live(state, session_id))

    _add_session_routes(app, state, authorized, session_owner)
    _add_avatar_routes(app, state, authorized)
    _add_socket_routes(app, state)
    _add_misc_routes(app, state, key_only)
    return app


#################################################################################
#                                    Routes                                     #
#################################################################################


def _session_options(state: ServerState, body: SessionRequest) -> SessionOptions:
    """Fill defaults from the model and check the client's asks against the limits."""
    cfg, media, limits = state.handle.pipe.config, state.settings.media, state.settings.limits
    fps = body.fps or int(cfg.fps)
    if fps > media.max_fps:
        raise Problem(422, f"fps {fps} is over the limit of {media.max_fps}", code="invalid_options")
    width, height = body.width, body.height
    if width is None and height is None:
        width, height = int(cfg.width), int(cfg.height)
    elif width is None:
        width = int(round(height * cfg.width / cfg.height))
    elif height is None:
        height = int(round(width * cfg.height / cfg.width))
    width, height = width - width % 2, height - height % 2  # yuv420 needs even sides
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


def _live(state: ServerState, session_id: str) -> bool:
    """The session exists and has not ended."""
    session = state.manager.sessions.get(session_id)
    return session is not None and not session.closed


def _session_token(state: ServerState, session: Session) -> str | None:
    """The answer's token: good for this session only, until it ends (or session_token_ttl_s)."""
    if state.auth.open:
        return None
    ttl = state.settings.auth.session_token_ttl_s or state.settings.sessions.max_duration_s
    return state.auth.issue_session(session.id, time.time() + ttl)


def _add_session_routes(app: FastAPI, state: ServerState, authorized: Any, session_owner: Any) -> None:
    @app.get(f"/{API_VERSION}/ice-servers", dependencies=[Depends(authorized)], tags=["sessions"])
    async def ice_servers() -> dict[str, Any]:
        """STUN/TURN servers to use in the offer."""
        return {"ice_servers": state.manager.ice_servers()}

    @app.post(f"/{API_VERSION}/sessions", status_code=201, response_model=SessionResponse,
              dependencies=[Depends(authorized)], tags=["sessions"],
              responses={400: {"description": "unusable SDP"}, 404: {"description": "unknown avatar"},
                         503: {"description": "no free session slot (see Retry-After)"}})
    async def create_session(body: SessionRequest, response: Response) -> SessionResponse:
        """Start a session: SDP offer + options -> SDP answer."""
        options = _session_options(state, body)
        avatar = state.avatars.get(body.avatar)
        session, sdp = await state.manager.create(body.sdp, options, avatar)
        base = f"/{API_VERSION}/sessions/{session.id}"
        response.headers["Location"] = base
        return SessionResponse(session_id=session.id, sdp=sdp, ice_servers=state.manager.ice_servers(),
                               events_url=f"{base}/events", audio_url=f"{base}/audio",
                               token=_session_token(state, session))

    @app.post(f"/{API_VERSION}/whep", status_code=201, dependencies=[Depends(authorized)], tags=["sessions"],
              response_class=Response, openapi_extra={"requestBody": {
                  "required": True, "content": {"application/sdp": {"schema": {"type": "string"}}}}},
              responses={201: {"content": {"application/sdp": {}}, "description": "SDP answer"}})
    async def whep(request: Request, avatar: str = DEFAULT_AVATAR_ID) -> Response:
        """WHEP playback: an application/sdp offer -> 201 SDP answer, `Location` to DELETE, ICE servers as `Link`."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/sdp":
            raise Problem(415, "a WHEP offer is sent as Content-Type: application/sdp", code="unsupported_media")
        try:
            sdp = (await request.body()).decode("utf-8")
        except UnicodeDecodeError as error:
            raise Problem(400, "the SDP offer is not UTF-8 text", code="bad_sdp") from error
        options = _session_options(state, SessionRequest(sdp=sdp or " ", avatar=avatar))
        session, answer = await state.manager.create(sdp, options, state.avatars.get(avatar))
        links = [f'<{url}>; rel="ice-server"' + (f'; username="{s["username"]}"; credential="{s["credential"]}"; '
                                                  'credential-type="password"' if "username" in s else "")
                 for s in state.manager.ice_servers() for url in s["urls"]]
        headers = {"Location": f"/{API_VERSION}/sessions/{session.id}"}
        if links:
            headers["Link"] = ", ".join(links)
        return Response(answer, status_code=201, media_type="application/sdp", headers=headers)

    @app.get(f"/{API_VERSION}/sessions/{{session_id}}", dependencies=[Depends(session_owner)], tags=["sessions"])
    async def get_session(session_id: str) -> dict[str, Any]:
        """State and stats of a live session."""
        session = state.manager.get(session_id)
        counters = session.counters
        first = None if counters.first_frame_at is None else round(counters.first_frame_at - session.created, 3)
        return {"session_id": session.id, "state": session.state, "avatar": session.options.avatar,
                "stats": session.stats(), "frames_sent": counters.frames_sent,
                "frames_generated_sent": counters.frames_generated_sent, "first_frame_s": first}

    @app.delete(f"/{API_VERSION}/sessions/{{session_id}}", status_code=204, dependencies=[Depends(session_owner)],
                tags=["sessions"])
    async def delete_session(session_id: str) -> Response:
        """End a session and free everything it holds."""
        await state.manager.get(session_id).close("deleted")
        return Response(status_code=204)


def _add_avatar_routes(app: FastAPI, state: ServerState, authorized: Any) -> None:
    @app.post(f"/{API_VERSION}/avatars", status_code=201, dependencies=[Depends(authorized)], tags=["avatars"],
              responses={413: {"description": "too many bytes or pixels"}, 415: {"description": "not PNG/JPEG/WebP"},
                         422: {"description": "corrupt, empty or too small"}})
    async def upload_avatar(request: Request, name: str | None = None) -> JSONResponse:
        """Upload an image: multipart/form-data field `image` (+ `name`), or the raw image bytes as the body."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=4)
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise Problem(422, "multipart upload needs a file field named 'image'", code="missing_image")
            data = await upload.read()
            field_name = form.get("name")
            name = field_name if isinstance(field_name, str) and field_name else name
        else:
            data = await request.body()
        avatar = await state.avatars.add(data, name)
        return JSONResponse(avatar.public(), status_code=201,
                            headers={"Location": f"/{API_VERSION}/avatars/{avatar.id}"})

    @app.get(f"/{API_VERSION}/avatars", dependencies=[Depends(authorized)], tags=["avatars"])
    async def list_avatars() -> dict[str, Any]:
        return {"avatars": [a.public() for a in state.avatars.list()]}

    @app.delete(f"/{API_VERSION}/avatars/{{avatar_id}}", status_code=204, dependencies=[Depends(authorized)],
                tags=["avatars"])
    async def delete_avatar(avatar_id: str) -> Response:
        state.avatars.delete(avatar_id)
        return Response(status_code=204)


def _add_misc_routes(app: FastAPI, state: ServerState, key_only: Any) -> None:
    @app.post(f"/{API_VERSION}/tokens", dependencies=[Depends(key_only)], tags=["auth"])
    async def issue_token() -> dict[str, Any]:
        """API key -> short-lived token for a browser (Bearer header or `?token=` on WebSockets)."""
        token, ttl = state.auth.issue()
        return {"token": token, "expires_in": ttl}

    @app.get("/healthz", tags=["probes"])
    async def healthz() -> JSONResponse:
        """The process serves requests and the engine worker is alive."""
        if not state.engine.running:
            return problem_response(503, f"engine worker is not running: {state.engine.error}", "engine_down")
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["probes"])
    async def readyz() -> JSONResponse:
        """Ready to take a new session (model loaded, not draining, a slot free)."""
        manager = state.manager
        body = {"status": "ready", "model": state.handle.public_name, "sessions": len(manager),
                "max_sessions": manager.max_sessions}
        if not (state.ready and state.engine.running) or manager.draining:
            return problem_response(503, "not ready", "not_ready")
        if manager.full:
            return problem_response(503, f"all {manager.max_sessions} session slots are in use", "capacity",
                                    {"Retry-After": str(state.settings.sessions.retry_after_s)})
        return JSONResponse(body)

    @app.get("/metrics", tags=["probes"])
    async def metrics(request: Request) -> Response:
        """Prometheus text; public unless auth.protect_metrics (then an API key, like POST /v1/tokens)."""
        from prometheus_client import CONTENT_TYPE_LATEST  # noqa: PLC0415

        if state.settings.auth.protect_metrics:
            key_only(request)
        text = state.metrics.render(list(state.manager.sessions.values()), state.engine,
                                    state.manager.max_sessions, state.handle.device)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    client = state.settings.path(state.settings.client_dir)

    def page(relative: str) -> Response:
        path = client / relative
        if not path.is_file():
            return problem_response(404, f"{relative} is not installed on this server", "not_installed")
        return FileResponse(path, media_type="text/html")

    @app.get("/", include_in_schema=False)
    async def demo() -> Response:
        return page("demo/index.html")

    @app.get("/overlay", include_in_schema=False)
    async def overlay() -> Response:
        return page("overlay/index.html")

    # Any site may load the client's modules (the one-tag embedding); the API stays limited to cors_origins.
    app.mount("/client", PublicAssets(StaticFiles(directory=client, check_dir=False)), name="client")


#################################################################################
#                                  WebSockets                                   #
#################################################################################


async def _open_socket(state: ServerState, ws: WebSocket, session_id: str) -> tuple[Session, Grant] | None:
    """Auth (`?token=` or Bearer: an API key or this session's token) and session lookup; refusals are
    accepted and closed with a code browsers can read (4401 unauthorized, 4403 a token for something
    else, 4404 unknown session). None when refused."""
    credential = ws.query_params.get("token") or bearer(ws.headers.get("authorization"))
    session = state.manager.sessions.get(session_id)
    try:
        grant = state.auth.check_session(credential, session_id, _live(state, session_id))
    except Problem as problem:
        code, reason = (WS_FORBIDDEN, "forbidden") if problem.status == 403 else (WS_UNAUTHORIZED, "unauthorized")
    else:
        if session is not None and not session.closed:
            await ws.accept()
            return session, grant
        code, reason = WS_NOT_FOUND, "unknown session"
    await ws.accept()
    await ws.close(code=code, reason=reason)
    return None


def _error(code: str, detail: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "detail": detail}


def _parse_pose(value: Any, expected: int) -> np.ndarray | None:
    """[[x, y, visibility], ...] in [0, 1] image coordinates (`expected` of them), or null."""
    if value is None:
        return None
    if not expected:
        raise InputError("this model takes no pose")
    if not isinstance(value, list) or len(value) != expected:
        raise InputError(f"keypoints must be a list of {expected} [x, y, visibility] triples")
    try:
        keypoints = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InputError("keypoints must be a list of [x, y, visibility] numbers") from error
    if keypoints.shape != (expected, 3):
        raise InputError(f"keypoints must have shape [{expected}, 3], got {list(keypoints.shape)}")
    if not np.isfinite(keypoints).all():
        raise InputError("keypoints must be finite numbers")
    return keypoints


def _receive_guard(state: ServerState, message: dict[str, Any], limiter: RateLimiter) -> str | None:
    """An error code when the message is over the size or rate limit."""
    limits = state.settings.limits
    size = len(message.get("bytes") or b"") + len((message.get("text") or "").encode())
    if size > limits.max_ws_message_bytes:
        return "message_too_large"
    if not limiter.allow():
        return "rate_limited"
    return None


def _add_socket_routes(app: FastAPI, state: ServerState) -> None:
    limits = state.settings.limits

    @app.websocket(f"/{API_VERSION}/sessions/{{session_id}}/events")
    async def events(ws: WebSocket, session_id: str) -> None:
        """State/stats/error events out; interrupt, set_text and pose in."""
        opened = await _open_socket(state, ws, session_id)
        if opened is None:
            return
        session, grant = opened
        queue = session.attach()
        sender = asyncio.create_task(_send_events(ws, queue, grant.expires))
        limiter = RateLimiter(limits.max_ws_messages_per_s, limits.ws_burst)
        try:
            while not sender.done() and (message := await _receive(ws)) is not None:
                problem = _receive_guard(state, message, limiter)
                try:
                    reply = _error(problem, "message dropped") if problem else _handle_command(state, session, message)
                except Exception as error:  # noqa: BLE001 - a bug, not the client's message: logged, the session ends
                    session.fail("events command", error)
                    continue
                if reply is not None:
                    session.offer(queue, reply)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            session.detach(queue)

    @app.websocket(f"/{API_VERSION}/sessions/{{session_id}}/audio")
    async def audio(ws: WebSocket, session_id: str) -> None:
        """PCM16 LE mono binary messages at ?sample_rate=; {"type": "flush"} and {"type": "clear"}."""
        opened = await _open_socket(state, ws, session_id)
        if opened is None:
            return
        session, grant = opened
        rate_text = ws.query_params.get("sample_rate", "16000")
        if not rate_text.isdigit() or not 8000 <= int(rate_text) <= limits.max_ws_sample_rate:
            await ws.send_json(_error("bad_sample_rate", f"sample_rate must be 8000..{limits.max_ws_sample_rate}"))
            await ws.close(code=WS_POLICY_VIOLATION)
            return
        decoder = PCM16Decoder(int(rate_text), session.rate)
        limiter = RateLimiter(limits.max_ws_messages_per_s, limits.ws_burst)
        closer = asyncio.create_task(_close_when_ended(ws, session, grant.expires))
        try:
            while (message := await _receive(ws)) is not None:
                problem = _receive_guard(state, message, limiter)
                try:
                    reply = _error(problem, "message dropped") if problem else _handle_audio(session, decoder, message)
                except Exception as error:  # noqa: BLE001 - a bug, not the client's message: logged, the session ends
                    session.fail("audio message", error)
                    reply = INTERNAL_ERROR
                if reply is not None and not await _send(ws, reply):
                    break
        finally:
            closer.cancel()
            await asyncio.gather(closer, return_exceptions=True)


async def _receive(ws: WebSocket) -> dict[str, Any] | None:
    """The next message; None once the socket is gone (the client left, or another task closed it meanwhile:
    Starlette's RuntimeError). Only the socket's own call is guarded, so a bug in handling a message is never
    taken for a closed socket."""
    try:
        message = await ws.receive()
    except (WebSocketDisconnect, RuntimeError):
        return None
    return None if message["type"] == "websocket.disconnect" else dict(message)


async def _send(ws: WebSocket, event: dict[str, Any]) -> bool:
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


async def _send_events(ws: WebSocket, queue: asyncio.Queue, expires: float | None) -> None:
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


def _load_json(text: str) -> Any:
    """A JSON message; InputError (clean text) when it is not JSON or nested too deeply for the parser."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"not JSON: {error.msg} at position {error.pos}") from None
    except RecursionError:
        raise InputError("JSON nested too deeply") from None


def _handle_command(state: ServerState, session: Session, message: dict[str, Any]) -> dict[str, Any] | None:
    """One client command on the events socket; an error event when it is unusable."""
    if message.get("text") is None:
        return _error("bad_message", "commands are JSON text messages")
    try:
        command = _load_json(message["text"])
    except InputError as error:
        return _error("bad_message", str(error))
    if not isinstance(command, dict) or not isinstance(command.get("type"), str):
        return _error("bad_message", 'a command is a JSON object with a "type"')
    kind = command["type"]
    try:
        if kind == "interrupt":
            session.interrupt()
        elif kind == "set_text":
            text = command.get("text")
            if text is not None and not isinstance(text, str):
                raise InputError('"text" must be a string or null')
            if text is not None:
                check_text(text, "text", state.settings.limits.max_text_chars)
            session.set_text(text)
        elif kind == "pose":
            session.set_pose(_parse_pose(command.get("keypoints"), state.handle.pose_keypoints))
        else:
            return _error("unknown_command", f"unknown command type {kind!r}")
    except InputError as error:
        return _error("bad_message", str(error))
    return None


def _handle_audio(session: Session, decoder: PCM16Decoder, message: dict[str, Any]) -> dict[str, Any] | None:
    """One message on the audio socket."""
    if message.get("bytes") is not None:
        try:
            pcm = decoder.decode(message["bytes"])
        except InputError as error:
            return _error("bad_audio", str(error))
        if not session.put_audio(pcm):
            return _error("buffer_full", "too much audio is pending; wait or send clear")
        return None
    try:
        command = _load_json(message.get("text") or "")
    except InputError as error:
        return _error("bad_message", str(error))
    kind = command.get("type") if isinstance(command, dict) else None
    if kind == "flush":
        session.flush()
    elif kind == "clear":
        session.interrupt()
    else:
        return _error("unknown_command", 'audio socket commands are {"type": "flush"} and {"type": "clear"}')
    return None
