"""The ASGI app: the services around a loaded pipeline, the middlewares and the routers (avatar_server.routes)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from avatar_server.auth import Authenticator
from avatar_server.avatars import DEFAULT_AVATAR_ID, AvatarStore
from avatar_server.clock import SYSTEM_CLOCK, Clock
from avatar_server.engine import Engine
from avatar_server.http import BodyLimit
from avatar_server.metrics import Metrics
from avatar_server.origins import WriteGuard
from avatar_server.problems import Problem, install_problem_handlers
from avatar_server.routes import API_PREFIX, avatars, pages, probes, sessions, sockets, tokens, whep
from avatar_server.runtime import PipelineHandle
from avatar_server.server_state import ServerState
from avatar_server.sessions import SessionManager
from avatar_server.settings import ServerSettings
from avatar_server.vad import VoiceWorker
from avatar_server.warmup import WarmUp
from model.errors import InputError

logger = logging.getLogger(__name__)


def _torch_threads(settings: ServerSettings) -> int:
    """The engine's intra-op threads: configured, else torch's default (read before silero-vad's import,
    which sets the importing thread to 1)."""
    import torch

    threads = settings.model.torch_threads or torch.get_num_threads()
    import silero_vad  # noqa: F401 - imported here for what its import does (see above)

    return threads


def _freeze_startup_objects() -> None:
    """Keep what exists at start (modules, the model: half a million objects and more) out of later collections.

    A full collection walks every tracked object on the event loop thread: under session churn (each session
    leaves ~1,700 objects in reference cycles) one ran every ~2 s and paused the loop, and every live session's
    video, for 350-550 ms; without the startup objects the longest pause measured 72 ms."""
    gc.collect()
    gc.freeze()


def build_state(settings: ServerSettings, handle: PipelineHandle, clock: Clock = SYSTEM_CLOCK) -> ServerState:
    """The engine, the VAD worker, the avatar store, the session manager, metrics and auth around `handle`; the
    engine and the sessions run on `clock`."""
    metrics = Metrics()
    engine = Engine(handle.pipe, settings.engine, steps=settings.model.steps, clock=clock.monotonic, observer=metrics)
    voice = VoiceWorker(settings.vad)
    return ServerState(settings=settings, handle=handle, engine=engine, voice=voice,
                       avatars=AvatarStore(handle.pipe, settings.limits),
                       manager=SessionManager(settings, engine, voice, handle, metrics, clock), metrics=metrics,
                       auth=Authenticator(settings.auth))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start-up (the default avatar, the engine and VAD threads) and shutdown (every session ends first)."""
    state: ServerState = app.state.server
    settings = state.settings
    default = settings.path(settings.default_avatar)
    try:
        avatar = await state.avatars.add(default.read_bytes(), "default", avatar_id=DEFAULT_AVATAR_ID, builtin=True)
    except (OSError, Problem) as error:
        raise InputError(f"default avatar {default} is unusable: {error}") from error
    warm_up = WarmUp(avatar.reference, state.handle.make_options(), settings.sessions.max_sessions)
    state.engine.start(_torch_threads(settings), warm_up)
    await asyncio.to_thread(state.engine.warmed.wait)  # not ready before: a session joining then would wait for it
    state.voice.start()
    _freeze_startup_objects()
    state.ready = True
    logger.info("omnilive server ready: model %s, up to %d sessions", state.handle.source,
                settings.sessions.max_sessions)
    try:
        yield
    finally:
        state.ready = False
        await state.manager.close_all("shutdown")
        await asyncio.to_thread(state.voice.stop)
        await asyncio.to_thread(state.engine.stop)
        gc.unfreeze()


def install_edge(app: FastAPI, settings: ServerSettings) -> None:
    """Problem+json errors and the HTTP edge every omnilive API shares (this app and the cluster front): body
    limits and timeouts, then the cross-site write guard, and CORS for `cors_origins`."""
    install_problem_handlers(app)
    app.add_middleware(WriteGuard, allowed_origins=settings.cors_origins)  # inside BodyLimit: limits and timeouts first
    app.add_middleware(BodyLimit, default=settings.limits.max_body_bytes, uploads=settings.limits.max_upload_bytes,
                       upload_path=f"{API_PREFIX}/avatars", timeout_s=settings.http.body_timeout_s)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["Location", "Retry-After", "Link"])


def create_app(settings: ServerSettings, handle: PipelineHandle) -> FastAPI:
    """The FastAPI app around a loaded pipeline (runtime.load_pipeline; tests: avatar_server.testing.fake_pipeline)."""
    app = FastAPI(title="omnilive", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Real-time talking-body avatars over WebRTC. Errors are application/problem+json.")
    app.state.server = build_state(settings, handle)
    install_edge(app, settings)
    for router in (sessions.router, whep.router, sessions.owner_router, avatars.router, sockets.router,
                   tokens.router, probes.router, pages.router):
        app.include_router(router)
    pages.mount_client(app, settings.path(settings.client_dir))
    return app
