"""Issue 12, items 9, 11 and 13: scoped session tokens, events sockets that cannot end someone else's
session, and vanished clients that free their slot within seconds."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from avatar_server.testing import fake_server
from server_helpers import offer_sdp

pytestmark = pytest.mark.usefixtures("loopback_ice")

LOG = logging.getLogger(__name__)
KEY = "k-security"
AUTH = {"api_keys": [KEY]}
LONG_CONNECT = {"max_sessions": 3, "connect_timeout_s": 30}


PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, *statuses: int) -> dict:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM)
    return response.json()


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
    response = await http.post("/v1/sessions", json={"sdp": await offer_sdp()}, headers=bearer(credential))
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
        assert_problem(await http.post("/v1/sessions", json={"sdp": await offer_sdp()}, headers=bearer(token)), 403)
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
        assert_problem(await http.post("/v1/sessions", json={"sdp": await offer_sdp()}, headers=bearer(token)), 403)
        assert await refused_with(f"{ws}{own}/events?token={token}") in (4401, 4404)
        assert await refused_with(f"{ws}{theirs}/events?token={token}") == 4403
        assert (await http.get(theirs, headers=bearer(KEY))).status_code == 200


async def test_sockets_close_with_4401_when_their_token_expires() -> None:
    auth = {**AUTH, "session_token_ttl_s": 1, "token_ttl_s": 1}
    async with fake_server(auth=auth, sessions=LONG_CONNECT) as (url, state), httpx.AsyncClient(base_url=url) as http:
        sdp = await offer_sdp()  # before the 1 s token is minted: gathering takes a while on a loaded machine
        client_token = (await http.post("/v1/tokens", headers=bearer(KEY))).json()["token"]
        created = await http.post("/v1/sessions", json={"sdp": sdp}, headers=bearer(client_token))
        assert created.status_code == 201, created.text
        mine = created.json()
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
        assert_problem(await http.post("/v1/sessions", json={"sdp": await offer_sdp()},
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


#################################################################################
#         Item 11: an events socket opened by someone else cannot end it         #
#################################################################################


async def test_opening_and_closing_the_events_socket_does_not_end_a_live_session() -> None:
    from avatar_server.peer import AvatarPeer

    sessions = {"max_sessions": 1, "reconnect_grace_s": 0.3}
    async with fake_server(sessions=sessions) as (url, state), httpx.AsyncClient(base_url=url) as http:
        owner = AvatarPeer(url, keep_images=False)           # a WHEP-like owner: no events socket of its own
        assert (await owner.connect(http)).status_code == 201
        await owner.wait_connected()
        session_id = owner.session["session_id"]
        events_url = url.replace("http", "ws") + owner.session["events_url"]
        for _ in range(3):                                    # a stranger opens and closes it, repeatedly
            async with ws_connect(events_url) as stranger:
                assert json.loads(await stranger.recv())["type"] == "state"
            await asyncio.sleep(0.2)
        await asyncio.sleep(4.0)                              # grace + the wait for a receiver report, and more
        session = state.manager.sessions.get(session_id)
        assert session is not None and not session.closed, session and session.close_reason
        frames = len(owner.received.video)
        await asyncio.sleep(0.5)
        assert len(owner.received.video) > frames             # media still flows
        assert (await http.delete(f"/v1/sessions/{session_id}")).status_code == 204
        await owner.close()


async def test_with_auth_only_the_owner_may_end_a_session() -> None:
    from avatar_server.peer import AvatarPeer

    async with fake_server(auth=AUTH, sessions={"reconnect_grace_s": 0.3}) as (url, state), \
            httpx.AsyncClient(base_url=url) as http:
        client_token = (await http.post("/v1/tokens", headers=bearer(KEY))).json()["token"]
        owner = AvatarPeer(url, keep_images=False, token=client_token)
        assert (await owner.connect(http)).status_code == 201
        await owner.wait_connected()
        path = f"/v1/sessions/{owner.session['session_id']}"
        other = await new_session(http)
        for credential in (client_token, other["token"]):
            assert_problem(await http.delete(path, headers=bearer(credential)), 403)
            assert await refused_with(url.replace("http", "ws") + f"{path}/events?token={credential}") == 4403
        assert len(state.manager) == 2
        assert (await http.delete(path, headers=bearer(owner.session["token"]))).status_code == 204
        await owner.close()


#################################################################################
#        Item 13: a vanished client frees its slot within 10 s                   #
#################################################################################

CLIENT_SCRIPT = """
import asyncio, json, sys
import aioice.ice, httpx
from websockets.asyncio.client import connect
from avatar_server.peer import AvatarPeer

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

async def main(url, with_events):
    peer = AvatarPeer(url, keep_images=False)
    async with httpx.AsyncClient() as http:
        assert (await peer.connect(http)).status_code == 201
    await peer.wait_connected()
    events = await connect(url.replace("http", "ws") + peer.session["events_url"]) if with_events else None
    while len(peer.received.video) < 10:
        await asyncio.sleep(0.05)
    print(json.dumps({"session_id": peer.session["session_id"]}), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2] == "events"))
"""


async def slot_freed_after(state, url: str, session_id: str, started: float, limit_s: float = 15.0) -> float:
    """Seconds from `started` until the session is gone and /readyz takes new sessions again."""
    async with httpx.AsyncClient(base_url=url) as http:
        while time.monotonic() - started < limit_s:
            if session_id not in state.manager.sessions and (await http.get("/readyz")).status_code == 200:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
    raise AssertionError(f"slot still held {limit_s} s after the client vanished")


@pytest.mark.parametrize("events", ["events", "no_events"])
async def test_killed_client_process_frees_its_slot_within_10_s(events: str) -> None:
    import os
    import signal
    import sys

    sessions = {"max_sessions": 1, "reconnect_grace_s": 10, "connect_timeout_s": 30}  # grace as in production
    async with fake_server(sessions=sessions) as (url, state):
        client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT_SCRIPT, url, events,
                                                      stdout=asyncio.subprocess.PIPE)
        try:
            line = await asyncio.wait_for(client.stdout.readline(), 60)
            session_id = json.loads(line)["session_id"]
            session = state.manager.get(session_id)
            assert session.state != "connecting" and bool(session.listeners) == (events == "events")
            killed = time.monotonic()
            os.kill(client.pid, signal.SIGKILL)
        finally:
            if client.returncode is None:
                client.kill()
            await client.wait()
        seconds = await slot_freed_after(state, url, session_id, killed)
        LOG.info("killed client (%s): slot free after %.2f s (%s)", events, seconds,
                                            session.close_reason)
        assert seconds < 10.0 and session.close_reason == "peer_timeout", (seconds, session.close_reason)


async def test_client_that_drops_its_transport_without_bye_frees_its_slot_within_10_s() -> None:
    from avatar_server.peer import AvatarPeer

    async with fake_server(sessions={"max_sessions": 1}) as (url, state), httpx.AsyncClient(base_url=url) as http:
        peer = AvatarPeer(url, keep_images=False)
        assert (await peer.connect(http)).status_code == 201
        await peer.wait_connected()
        await asyncio.sleep(1.0)
        session = state.manager.get(peer.session["session_id"])
        gone = time.monotonic()
        await peer.vanish()                                    # no DTLS close, no RTCP BYE, no events socket
        seconds = await slot_freed_after(state, url, session.id, gone)
        assert seconds < 10.0 and session.close_reason == "peer_timeout", (seconds, session.close_reason)
        LOG.info("vanished client: slot free after %.2f s", seconds)
        await peer.close()


#################################################################################
#      Item 16: no paths in /readyz, /metrics key, quiet logs at start and use    #
#################################################################################


def test_readyz_names_the_model_without_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import model.pipeline
    from avatar_server.runtime import load_pipeline
    from avatar_server.settings import ROOT, load_settings

    config = SimpleNamespace(width=128, height=128, fps=25, chunk_frames=2, steps=2)
    fake = SimpleNamespace(config=config, dit=SimpleNamespace(config=SimpleNamespace(pose_channels=0)),
                           set_decode_precision=lambda precision: None)
    monkeypatch.setattr(model.pipeline.AvatarPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: fake))
    settings = load_settings("configs/server/test.yaml", environ={}, model={"weights": "weights/tiny"})
    handle = load_pipeline(settings)
    assert str(ROOT) in handle.source                      # the log may say where the weights are
    assert handle.public_name == "weights tiny" and "/" not in handle.public_name


async def test_readyz_and_pages_show_no_filesystem_paths() -> None:
    from avatar_server.settings import ROOT

    async with fake_server(client_dir="no-such-client-dir") as (url, state), httpx.AsyncClient(base_url=url) as http:
        state.handle.source = f"weights {ROOT}/weights/tiny"  # as load_pipeline writes it
        state.handle.name = "weights tiny"
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["model"] == "weights tiny"
        missing = await http.get("/")
        for response in (ready, missing):
            assert str(ROOT) not in response.text and "/work" not in response.text, response.text


async def test_metrics_are_public_unless_protected() -> None:
    async with fake_server(auth=AUTH) as (url, state), httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/metrics")).status_code == 200
    async with fake_server(auth={**AUTH, "protect_metrics": True}) as (url, state), \
            httpx.AsyncClient(base_url=url) as http:
        assert_problem(await http.get("/metrics"), 401)
        client_token = (await http.post("/v1/tokens", headers=bearer(KEY))).json()["token"]
        assert_problem(await http.get("/metrics", headers=bearer(client_token)), 401)
        assert (await http.get("/metrics", headers=bearer(KEY))).status_code == 200


def test_vae_loads_without_the_ignored_config_attributes_warning() -> None:
    import torch
    from diffusers import AutoencoderTiny
    from diffusers.utils import logging as diffusers_logging

    from model.vae import FrameVAE

    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    target = diffusers_logging.get_logger("diffusers")
    handler = Capture(logging.WARNING)
    target.addHandler(handler)
    try:
        vae = FrameVAE.from_pretrained("weights/tiny/vae")
        assert not [r for r in records if "will be ignored" in r], records
        reference = AutoencoderTiny.from_pretrained("weights/tiny/vae", local_files_only=True)
        assert [r for r in records if "will be ignored" in r], "the check would not see the warning"
    finally:
        target.removeHandler(handler)
    ours, theirs = vae.autoencoder.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not vae.training


async def test_text_encoder_draws_no_progress_bar_in_the_server_log() -> None:
    async with fake_server(log_level="info") as (url, state):
        level = logging.getLogger("sentence_transformers.sentence_transformer.model").getEffectiveLevel()
        assert level >= logging.WARNING  # sentence-transformers shows a tqdm bar per encode at INFO/DEBUG
