"""Client tokens: an API key buys a short-lived token a browser may hold."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from avatar_server.routes import API_PREFIX
from avatar_server.routes.dependencies import State, key_only
from avatar_server.schemas import ClientToken

router = APIRouter(prefix=API_PREFIX, tags=["auth"], dependencies=[Depends(key_only)])


@router.post("/tokens")
async def issue_token(state: State) -> ClientToken:
    """API key -> short-lived token for a browser (Bearer header or `?token=` on WebSockets)."""
    token, ttl = state.auth.issue()
    return ClientToken(token=token, expires_in=ttl)
