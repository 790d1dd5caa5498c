"""The cluster front: the public API of `omnilive serve` (same routes, bodies, codes) over a pool of workers.

The front places new sessions (POST /v1/sessions, POST /v1/whep), forwards every later call of a session to the
worker that owns it (GET/DELETE, its events and audio sockets), stores uploaded avatars on every worker, and
answers the probes and /metrics for the pool. Anything else (tokens, ICE servers, the avatar list, the OpenAPI
document) is forwarded to a worker that is up, which answers it as a single server would.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any, AsyncIterator, cast

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import HTTPConnection

from avatar_server.app import install_edge
from avatar_server.auth import Authenticator
from avatar_server.avatars import parse_mouth
from avatar_server.cluster.metrics import FrontMetrics
from avatar_server.cluster.placement import Placement
from avatar_server.cluster.pool import Worker, WorkerPool, connect, disconnect
from avatar_server.cluster.proxy import SocketRelay, forward, relayed
from avatar_server.cluster.settings import ClusterSettings
from avatar_server.cluster.worker import AvatarResult, PipelineFactory
from avatar_server.problems import Problem, problem_response
from avatar_server.routes import API_PREFIX, pages
from avatar_server.routes.avatars import read_upload
from avatar_server.routes.dependencies import authorized, key_only, metrics_access
from avatar_server.settings import ServerSettings

logger = logging.getLogger(__name__)

WS_TRY_AGAIN_LATER = 1013


@dataclass
class FrontState:
    """What the front's routes share (`app.state.server`); `settings` and `auth` are what the single server's
    credential checks (routes.dependencies) and pages (routes.pages) read, so the front reuses them."""

    settings: ServerSettings
    cluster: ClusterSettings
    pool: WorkerPool
    auth: Authenticator
    metrics: FrontMetrics
    http: httpx.AsyncClient | None = None
    ready: bool = False

    @property
    def client(self) -> httpx.AsyncClient:
        if self.http is None:
            raise Problem(503, "the front is starting", code="not_ready")
        return self.http

    def retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.settings.sessions.retry_after_s)}


def front_state(connection: HTTPConnection) -> FrontState:
    return cast(FrontState, connection.app.state.server)


Front = Annotated[FrontState, Depends(front_state)]
router = APIRouter()


#################################################################################
#                                   Sessions                                    #
#################################################################################


@router.post(f"{API_PREFIX}/sessions", dependencies=[Depends(authorized)])
async def create_session(request: Request, state: Front) -> Response:
    """Start a session on the least-loaded worker with a free slot (503 + Retry-After when none has one)."""
    return await place(state, request)


@router.post(f"{API_PREFIX}/whep", dependencies=[Depends(authorized)])
async def whep(request: Request, state: Front) -> Response:
    """WHEP playback, placed like a session."""
    return await place(state, request)


async def place(state: FrontState, request: Request) -> Response:
    """Reserve a slot, forward the offer to its worker, and record the session there when it answers 201."""
    body, started, tried = await request.body(), time.perf_counter(), set[str]()
    pool = state.pool
    while True:
        try:
            load = pool.placement.reserve(exclude=tried)
        except Problem:
            state.metrics.sessions_rejected.labels(reason="capacity").inc()
            raise
        worker = pool.worker(load.name)
        try:
            if worker.url is None:
                raise httpx.ConnectError("the worker is not serving")
            upstream = await forward(state.client, worker.url, request, body)
        except httpx.TransportError as error:
            Placement.release(load)
            logger.warning("worker %s unreachable while placing a session: %r", worker.name, error)
            pool.suspect(worker)
            tried.add(load.name)
            continue
        break
    location = upstream.headers.get("location", "")
    if upstream.status_code == 201 and location:
        Placement.commit(load, location.rsplit("/", 1)[-1])
    else:
        Placement.release(load)
    front_s = time.perf_counter() - started - upstream.elapsed.total_seconds()
    state.metrics.setup_overhead.observe(max(0.0, front_s))
    return relayed(upstream)


def route_to(state: FrontState, session_id: str) -> Worker:
    """The session's worker; for a session the front does not know, any worker that is up (it answers 404,
    401 or 403 exactly as a single server would)."""
    worker = state.pool.owner(session_id) or state.pool.any_up()
    if worker is None or worker.url is None:
        raise Problem(503, "no worker is up; retry later", code="not_ready", headers=state.retry_after())
    return worker


@router.api_route(f"{API_PREFIX}/sessions/{{session_id}}", methods=["GET", "DELETE"])
async def session(session_id: str, request: Request, state: Front) -> Response:
    """GET or DELETE a session at the worker that owns it."""
    worker = route_to(state, session_id)
    upstream = await forward_to(state, worker, request)
    if request.method == "DELETE" and upstream.status_code in (204, 404):
        worker.load.sessions.pop(session_id, None)
    return relayed(upstream)


async def session_socket(ws: WebSocket, session_id: str) -> None:
    """A session's events or audio socket, relayed to the worker that owns the session."""
    state = front_state(ws)
    try:
        worker = route_to(state, session_id)
    except Problem:
        await ws.accept()
        await ws.close(code=WS_TRY_AGAIN_LATER, reason="no worker is up")
        return
    base = cast(str, worker.url).replace("http", "ws", 1)
    relay = SocketRelay(ws)
    worker.relays.add(relay)
    try:
        served = await relay.run(f"{base}{ws.url.path}" + (f"?{ws.url.query}" if ws.url.query else ""))
    finally:
        worker.relays.discard(relay)
    if not served:
        state.pool.suspect(worker)


for _channel in ("events", "audio"):
    router.add_api_websocket_route(f"{API_PREFIX}/sessions/{{session_id}}/{_channel}", session_socket)


async def forward_to(state: FrontState, worker: Worker, request: Request) -> httpx.Response:
    """Forward to one worker; 502 when it cannot be reached (it is then checked at once)."""
    try:
        if worker.url is None:
            raise httpx.ConnectError("the worker is not serving")
        return await forward(state.client, worker.url, request, await request.body())
    except httpx.TransportError as error:
        logger.warning("worker %s unreachable: %r", worker.name, error)
        state.pool.suspect(worker)
        raise Problem(502, "the worker for this request cannot be reached; retry", code="worker_unreachable",
                      headers=state.retry_after()) from None


#################################################################################
#                                    Avatars                                    #
#################################################################################


def avatar_answer(result: AvatarResult, status: int) -> Response:
    """A worker's avatar outcome as the single server's answer."""
    if result.problem is not None:
        code, detail, name = result.problem
        raise Problem(code, detail, code=name)
    if result.info is None:
        return Response(status_code=status)
    return JSONResponse(result.info, status_code=status,
                        headers={"Location": f"{API_PREFIX}/avatars/{result.info['id']}"})


@router.post(f"{API_PREFIX}/avatars", dependencies=[Depends(authorized)], status_code=201)
async def upload_avatar(request: Request, state: Front, name: str | None = None, mouth: str | None = None) -> Response:
    """Validate on one worker, then store on every worker (and on each worker Ray restarts)."""
    data, name, mouth = await read_upload(request, name, mouth)
    return avatar_answer(await state.pool.add_avatar(data, name, None if mouth is None else parse_mouth(mouth)), 201)


@router.delete(f"{API_PREFIX}/avatars/{{avatar_id}}", dependencies=[Depends(authorized)], status_code=204)
async def delete_avatar(avatar_id: str, state: Front) -> Response:
    return avatar_answer(await state.pool.delete_avatar(avatar_id), 204)


#################################################################################
#                                 Pool (API key)                                #
#################################################################################


def describe(worker: Worker) -> dict[str, Any]:
    """A worker as the pool routes show it."""
    load, status = worker.load, worker.status
    return {"worker": worker.name, "up": load.up, "draining": load.draining, "sessions": len(load.sessions),
            "max_sessions": load.capacity, "restarts": max(0, worker.incarnations - 1),
            "url": worker.url, "pid": None if status is None else status.pid,
            "generated_fps": None if status is None else status.generated_fps}


@router.get(f"{API_PREFIX}/workers", dependencies=[Depends(key_only)])
async def workers(state: Front) -> dict[str, Any]:
    """Every worker: up, draining, sessions, slots, restarts, where it serves."""
    return {"workers": [describe(worker) for worker in state.pool.workers]}


def named(state: FrontState, name: str) -> Worker:
    try:
        return state.pool.worker(name)
    except StopIteration:
        raise Problem(404, f"unknown worker {name!r}", code="unknown_worker") from None


@router.post(f"{API_PREFIX}/workers/{{name}}/drain", dependencies=[Depends(key_only)])
async def drain(name: str, state: Front) -> dict[str, Any]:
    """No new sessions on this worker; its live sessions go on until they end (rolling upgrades)."""
    worker = named(state, name)
    await state.pool.drain(worker, True)
    return describe(worker)


@router.post(f"{API_PREFIX}/workers/{{name}}/resume", dependencies=[Depends(key_only)])
async def resume(name: str, state: Front) -> dict[str, Any]:
    """Take new sessions again."""
    worker = named(state, name)
    await state.pool.drain(worker, False)
    return describe(worker)


@router.post(f"{API_PREFIX}/workers/{{name}}/restart", dependencies=[Depends(key_only)])
async def restart(name: str, state: Front) -> dict[str, Any]:
    """Restart a worker's process (it re-reads its code and model); 409 while it holds sessions."""
    worker = named(state, name)
    if worker.load.sessions:
        raise Problem(409, f"worker {name} holds {len(worker.load.sessions)} sessions; drain it and wait",
                      code="worker_busy")
    state.pool.restart(worker)
    return describe(worker)


#################################################################################
#                                    Probes                                     #
#################################################################################


@router.get("/healthz")
async def healthz(state: Front) -> JSONResponse:
    """The front serves requests (the workers' health is in /readyz and /metrics)."""
    up = sum(worker.load.up for worker in state.pool.workers)
    return JSONResponse({"status": "ok", "workers_up": up, "workers": len(state.pool.workers)})


@router.get("/readyz")
async def readyz(state: Front) -> JSONResponse:
    """Ready to take a new session: a worker is up, not draining, with a free slot."""
    pool = state.pool
    up = [worker for worker in pool.workers if worker.load.up]
    if not state.ready or not up:
        return problem_response(503, "not ready: no worker is up", "not_ready")
    body = {"status": "ready", "model": next(w.status.model for w in up if w.status is not None),
            "sessions": pool.placement.sessions, "max_sessions": pool.placement.capacity,
            "workers": {"up": len(up), "total": len(pool.workers)}}
    if not any(worker.load.free for worker in up):
        return problem_response(503, f"all {pool.placement.capacity} session slots of the pool are in use",
                                "capacity", state.retry_after(), extra=body)
    return JSONResponse(body)


@router.get("/metrics", dependencies=[Depends(metrics_access)])
async def metrics(state: Front) -> Response:
    """Prometheus text: the pool, per worker and pool-wide; public unless auth.protect_metrics."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


#################################################################################
#                                  Other routes                                 #
#################################################################################


@router.api_route("/{path:path}", methods=["GET", "POST", "DELETE", "PUT", "PATCH"], include_in_schema=False)
async def elsewhere(path: str, request: Request, state: Front) -> Response:
    """Tokens, ICE servers, the avatar list, /openapi.json, unknown paths: a worker that is up answers."""
    worker = state.pool.any_up()
    if worker is None:
        raise Problem(503, "no worker is up; retry later", code="not_ready", headers=state.retry_after())
    return relayed(await forward_to(state, worker, request))


#################################################################################
#                                   Assembly                                    #
#################################################################################


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Join Ray, start the pool (workers come up in the background: /readyz says when), stop it at shutdown."""
    import asyncio

    state: FrontState = app.state.server
    await asyncio.to_thread(connect, state.cluster)
    state.http = httpx.AsyncClient(timeout=state.cluster.proxy_timeout_s,
                                   limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
    await state.pool.start()
    state.ready = True
    logger.info("omnilive cluster front ready: %d workers (%s)", state.cluster.workers, state.cluster.address)
    try:
        yield
    finally:
        state.ready = False
        await state.pool.stop()
        await state.http.aclose()
        await asyncio.to_thread(disconnect, state.cluster)


def create_front(settings: ServerSettings, cluster: ClusterSettings, factory: PipelineFactory) -> FastAPI:
    """The front app: the pool of `cluster.workers` workers, each loading its model with `factory`."""
    app = FastAPI(title="omnilive cluster front", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    pool = WorkerPool(settings, cluster, factory)
    app.state.server = FrontState(settings=pool.settings, cluster=cluster, pool=pool,
                                  auth=Authenticator(pool.settings.auth), metrics=FrontMetrics(pool))
    install_edge(app, settings)
    app.include_router(pages.router)
    pages.mount_client(app, settings.path(settings.client_dir))
    app.include_router(router)
    return app
