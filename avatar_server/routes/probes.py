"""Probes and metrics: /healthz, /readyz (public) and /metrics (public unless `auth.protect_metrics`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from avatar_server.problems import problem_response
from avatar_server.routes.dependencies import State, metrics_access

router = APIRouter(tags=["probes"])


@router.get("/healthz")
async def healthz(state: State) -> JSONResponse:
    """The process serves requests and the engine worker is alive."""
    if not state.engine.running:
        return problem_response(503, f"engine worker is not running: {state.engine.error}", "engine_down")
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """Ready to take a new session (model loaded, not draining, a slot free)."""
    manager = state.manager
    if not (state.ready and state.engine.running) or manager.draining:
        return problem_response(503, "not ready", "not_ready")
    if manager.full:
        return problem_response(503, f"all {manager.max_sessions} session slots are in use", "capacity",
                                {"Retry-After": str(state.settings.sessions.retry_after_s)})
    return JSONResponse({"status": "ready", "model": state.handle.public_name, "sessions": len(manager),
                         "max_sessions": manager.max_sessions})


@router.get("/metrics", dependencies=[Depends(metrics_access)])
async def metrics(state: State) -> Response:
    """Prometheus text; public unless auth.protect_metrics (then an API key, like POST /v1/tokens)."""
    text = state.metrics.render(state.engine, state.manager.max_sessions, state.handle.device)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
