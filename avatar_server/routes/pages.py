"""The demo page (/), the OBS overlay (/overlay) and the JavaScript client (/client/), from `client_dir`."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from avatar_server.origins import PublicAssets
from avatar_server.problems import problem_response
from avatar_server.routes.dependencies import State
from avatar_server.server_state import ServerState

router = APIRouter(include_in_schema=False)


def page(state: ServerState, relative: str) -> Response:
    path = state.settings.path(state.settings.client_dir) / relative
    if not path.is_file():
        return problem_response(404, f"{relative} is not installed on this server", "not_installed")
    return FileResponse(path, media_type="text/html")


@router.get("/")
async def demo(state: State) -> Response:
    return page(state, "demo/index.html")


@router.get("/overlay")
async def overlay(state: State) -> Response:
    return page(state, "overlay/index.html")


def mount_client(app: FastAPI, client_dir: Path) -> None:
    """/client/: any site may load the client's modules (the one-tag embedding); the API stays limited to
    cors_origins."""
    app.mount("/client", PublicAssets(StaticFiles(directory=client_dir, check_dir=False)), name="client")
