"""What the routes depend on: the server's state and the credential checks, one per router.

The credential is an `Authorization: Bearer` header (FastAPI's HTTPBearer, so /openapi.json documents it):
an API key, a client token or a session token (avatar_server.auth says what each may do). With no API keys
configured every check passes.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from avatar_server.server_state import ServerState


def server_state(connection: HTTPConnection) -> ServerState:
    """The app's ServerState (HTTP requests and WebSockets alike)."""
    return cast(ServerState, connection.app.state.server)


State = Annotated[ServerState, Depends(server_state)]

BEARER = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="An API key, a client token (POST /v1/tokens) or a session's token; "
                                "none on a server without API keys.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


def credential(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return None if credentials is None else credentials.credentials


def authorized(state: State, credentials: Credentials) -> None:
    """An API key or a client token: the routes a browser needs to start sessions."""
    state.auth.check(credential(credentials))


def key_only(state: State, credentials: Credentials) -> None:
    """An API key."""
    state.auth.check(credential(credentials), key_only=True)


def session_owner(session_id: str, state: State, credentials: Credentials) -> None:
    """An API key or this session's own token while the session lives."""
    state.auth.check_session(credential(credentials), session_id, state.live(session_id))


def metrics_access(state: State, credentials: Credentials) -> None:
    """Public, unless `auth.protect_metrics`: then an API key."""
    if state.settings.auth.protect_metrics:
        key_only(state, credentials)
