"""Issue 12, items 9, 11 and 13: scoped session tokens, events sockets that cannot end someone else's
session, and vanished clients that free their slot within seconds."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from aiortc import RTCPeerConnection

from avatar_server.testing import fake_server

pytestmark = pytest.mark.usefixtures("loopback_ice")

KEY = "k-security"
AUTH = {"api_keys": [KEY]}
LONG_CONNECT = {"max_sessions": 3, "connect_timeout_s": 30}


PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, *statuses: int) -> dict:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM)
    return response.json()


async def make_offer() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def close_code(ws, timeout: float = 5.0) -> int:
    """Read until the server closes the socket; its close code."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return closed.value.rcvd.code


async def refused_with(ws_url: str) -> int:
    """The close code a refused WebSocket gets."""
    async with ws_connect(ws_url) as ws:
        return await close_code(ws)


async def new_session(http: httpx.AsyncClient, credential: str = KEY) -> dict:
    response = await http.post("/v1/sessions", json={"sdp": await make_offer()}, headers=bearer(credential))
    assert response.status_code == 201, response.text
    return response.json()


#################################################################################
#                         Item 9: session tokens are scoped                     #
#################################################################################


async def test_session_token_works_only_for_its_own_session_and_cannot_create_anything() -> None:
    async with fake_server(auth=AUTH, sessions=LONG_CONNECT) as (url, state), httpx.AsyncClient(base_url=url) as http:
        mine, other = await new_session(http), await new_session(http)
        token, own, theirs = mine["token"], f"/v1/sessions/{mine['session_id']}", f"/v1/sessions/{other['session_id']}"
        ws = url.replace("http", "ws")
        assert (await http.get(own, headers=bearer(token))).status_code == 200
        for method, path in (("GET", theirs), ("DELETE", theirs), ("POST", "/v1/tokens"), ("GET", "/v1/avatars"),
                             ("DELETE", "/v1/avatars/default"), ("GET", "/v1/ice-servers")):
            assert_problem(await http.request(method, path, headers=bearer(token)), 403)
        assert_problem(await http.post("/v1/sessions", json={"sdp": await make_offer()}, headers=bearer(token)), 403)
        assert_problem(await http.post("/v1/avatars", content=b"\x89PNG", headers=bearer(token)), 403)
        assert await refused_with(f"{ws}{theirs}/events?token={token}") == 4403
        assert await refused_with(f"{ws}{theirs}/audio?token={token}") == 4403

        client_token = (await http.post("/v1/tokens", headers=bearer(KEY))).json()["token"]
        for method in ("GET", "DELETE"):  # a client token may start sessions, never read or end one
            assert_problem(await http.request(method, own, headers=bearer(client_token)), 403)
        assert await refused_with(f"{ws}{own}/events?token={client_token}") == 4403
        assert len(state.manager) == 2


async def test_session_token_dies_with_its_session_and_its_sockets_close() -> None:
    async with fake_server(auth=AUTH, sessions=LONG_CONNECT) as (url, state), httpx.AsyncClient(base_url=url) as http:
        mine, other = await new_session(http), await new_session(http)
        token, own, theirs = mine["token"], f"/v1/sessions/{mine['session_id']}", f"/v1/sessions/{other['session_id']}"
        ws = url.replace("http", "ws")
        async with ws_connect(f"{ws}{own}/events?token={token}") as events, \
                ws_connect(f"{ws}{own}/audio?token={token}") as audio:
            assert json.loads(await events.recv())["type"] == "state"
            assert (await http.delete(own, headers=bearer(token))).status_code == 204  # the owner may end it
            assert await close_code(events) == 1000 and await close_code(audio) == 1000
        assert_problem(await http.get(own, headers=bearer(token)), 401)
        assert_problem(await http.delete(own, headers=bearer(token)), 401)
        assert_problem(await http.get(theirs, headers=bearer(token)), 403)
        assert_problem(await http.delete(theirs, headers=bearer(token)), 403)
        assert_problem(await http.post("/v1/sessions", json={"sdp": await make_offer()}, headers=bearer(token)), 403)
        assert await refused_with(f"{ws}{own}/events?token={token}") in (4401, 4404)
        assert await refused_with(f"{ws}{theirs}/events?token={token}") == 4403
        assert (await http.get(theirs, headers=bearer(KEY))).status_code == 200


async def test_sockets_close_with_4401_when_their_token_expires() -> None:
    auth = {**AUTH, "session_token_ttl_s": 1, "token_ttl_s": 1}
    async with fake_server(auth=auth, sessions=LONG_CONNECT) as (url, state), httpx.AsyncClient(base_url=url) as http:
        client_token = (await http.post("/v1/tokens", headers=bearer(KEY))).json()["token"]
        mine = await new_session(http, client_token)
        own = f"/v1/sessions/{mine['session_id']}"
        base = url.replace("http", "ws") + own
        started = time.monotonic()
        async with ws_connect(f"{base}/events?token={mine['token']}") as events, \
                ws_connect(f"{base}/audio?token={mine['token']}") as audio, \
                ws_connect(base + "/events", additional_headers=bearer(KEY)) as keyed:
            assert await close_code(events) == 4401 and await close_code(audio) == 4401
            assert events.close_reason == "token expired"
            assert time.monotonic() - started < 3.0
            assert json.loads(await keyed.recv())["type"] == "state"   # the API key's socket stays open
        assert (await http.get(own, headers=bearer(KEY))).status_code == 200  # the session lives on
        assert_problem(await http.get(own, headers=bearer(mine["token"])), 401)
        assert_problem(await http.post("/v1/sessions", json={"sdp": await make_offer()},
                                       headers=bearer(client_token)), 401)
        assert await refused_with(f"{base}/events?token={mine['token']}") == 4401


def test_token_scope_is_signed() -> None:
    from avatar_server.auth import Authenticator
    from avatar_server.settings import AuthSettings

    auth = Authenticator(AuthSettings(api_keys=("key",), token_secret="s"))
    token = auth.issue_session("s_0123456789abcdef", expires=2000.0)
    grant = auth.token_grant(token, now=1000.0)
    assert grant is not None and grant.kind == "session" and grant.session_id == "s_0123456789abcdef"
    forged = token.replace("s_0123456789abcdef", "s_fedcba9876543210")
    assert auth.token_grant(forged, now=1000.0) is None
    client, _ = auth.issue(now=1000.0)
    assert auth.token_grant(client.replace(".c.", ".s_0123456789abcdef.", 1), now=1000.0) is None
    assert auth.token_grant(token, now=2000.0) is None
