"""AvatarWorker: one Ray actor = one `omnilive serve` (the same app, engine and WebRTC peers) on its node's IP.

The actor is a plain class here; the pool wraps it with ray.remote and its resources. Ray restarts it when its
process dies (a fresh `incarnation`), and the pool then calls `start` again and pushes the avatars back. Media
never leaves the worker: its aiortc peers gather the candidates of the node it runs on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any, Callable

from avatar_server.problems import Problem
from avatar_server.runtime import PipelineHandle
from avatar_server.schemas import AvatarInfo
from avatar_server.server_state import ServerState
from avatar_server.settings import ServerSettings
from model.conditioning.mouth import MouthBox

logger = logging.getLogger(__name__)

PipelineFactory = Callable[[ServerSettings], PipelineHandle]


@dataclass(frozen=True)
class WorkerStatus:
    """What the front reads from a worker every `health_interval_s`."""

    incarnation: str            # new each time Ray (re)starts the actor
    pid: int
    url: str | None             # http://NODE_IP:PORT once serving, else None
    model: str                  # the model's public name (never a path)
    ready: bool                 # start-up done and the engine thread alive
    draining: bool
    max_sessions: int
    sessions: tuple[str, ...]   # live session ids
    generated_fps: float        # freshly generated frames shown per second, all its sessions
    latency_ms_p50: float | None  # the median of its sessions' p50 latency (audio in -> frame out)


@dataclass(frozen=True)
class AvatarResult:
    """An avatar call's outcome: the stored avatar's public fields, or the problem a single server would answer."""

    info: dict[str, Any] | None = None
    problem: tuple[int, str, str] | None = None  # status, detail, code


def node_address() -> str:
    """This node's IP as other nodes reach it (the address its default route leaves from)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, the kernel only picks a route
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


class AvatarWorker:
    """Serves the single-process app on `host` (None: the node's IP) and a free port once `start` is called."""

    def __init__(self, settings: ServerSettings, factory: PipelineFactory, host: str | None) -> None:
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.settings = settings
        self.factory = factory
        self.host = host or node_address()
        self.incarnation = secrets.token_hex(6)
        self.state: ServerState | None = None
        self.url: str | None = None
        self._server: Any = None
        self._task: asyncio.Task | None = None
        self._starting = asyncio.Lock()
        self._adding: dict[str, asyncio.Future] = {}  # avatar id -> its encoding under way (one per avatar)

    async def start(self) -> WorkerStatus:
        """Load the model, build the app and serve it (idempotent); the status once it serves."""
        async with self._starting:
            if self._server is None:
                await self._serve()
        return self.status()

    async def _serve(self) -> None:
        from avatar_server.app import create_app
        from avatar_server.http import start_uvicorn, uvicorn_config

        handle = await asyncio.to_thread(self.factory, self.settings)
        app = create_app(self.settings, handle)
        server, task, port = await start_uvicorn(uvicorn_config(app, self.settings, host=self.host, port=0, loop="none"))
        self.state, self._server, self._task = app.state.server, server, task
        self.url = f"http://{self.host}:{port}"
        logger.info("worker %s serving on %s (pid %d)", self.incarnation, self.url, os.getpid())

    def status(self) -> WorkerStatus:
        """Capacity, live sessions and figures (cheap: the front calls it every health interval)."""
        state = self.state
        if state is None:
            return WorkerStatus(self.incarnation, os.getpid(), None, "", False, False, 0, (), 0.0, None)
        sessions = [s for s in list(state.manager.sessions.values()) if not s.closed]
        p50s = sorted(p for s in sessions if (p := s.stats()["latency_ms_p50"]) is not None)
        return WorkerStatus(
            incarnation=self.incarnation, pid=os.getpid(), url=self.url, model=state.handle.public_name,
            ready=state.ready and state.engine.running, draining=state.manager.draining,
            max_sessions=state.manager.max_sessions, sessions=tuple(s.id for s in sessions),
            generated_fps=round(sum(s.generated_fps for s in sessions), 2),
            latency_ms_p50=p50s[len(p50s) // 2] if p50s else None)

    def drain(self, draining: bool) -> WorkerStatus:
        """Stop (or resume) taking new sessions; live ones go on until they end."""
        if self.state is not None:
            self.state.manager.draining = draining
        return self.status()

    async def add_avatar(self, data: bytes, name: str | None, avatar_id: str,
                         mouth: MouthBox | None = None) -> AvatarResult:
        """Validate and encode an uploaded avatar under the front's id; features computed once per worker (a second
        call for the same id waits for the first, or finds it stored)."""
        if self.state is None:
            return AvatarResult(problem=(503, "the worker is starting", "not_ready"))
        store = self.state.avatars
        if avatar_id not in self._adding and avatar_id not in {a.id for a in store.list()}:
            self._adding[avatar_id] = asyncio.ensure_future(store.add(data, name, avatar_id=avatar_id, mouth=mouth))
        try:
            avatar = await asyncio.shield(self._adding[avatar_id]) if avatar_id in self._adding else store.get(avatar_id)
        except Problem as problem:
            return AvatarResult(problem=(problem.status, problem.detail, problem.code))
        finally:
            self._adding.pop(avatar_id, None)
        return AvatarResult(info=AvatarInfo.model_validate(avatar).model_dump())

    def delete_avatar(self, avatar_id: str) -> AvatarResult:
        """Forget an avatar (the built-in one stays: 409, as on a single server)."""
        if self.state is None:
            return AvatarResult(problem=(503, "the worker is starting", "not_ready"))
        try:
            self.state.avatars.delete(avatar_id)
        except Problem as problem:
            return AvatarResult(problem=(problem.status, problem.detail, problem.code))
        return AvatarResult()

    async def stop(self) -> None:
        """End every session and stop serving (the front's shutdown)."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
