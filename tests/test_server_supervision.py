"""Supervision (issue 14): a session whose task or engine handler fails ends with a clear reason and frees
everything; an internal error while creating a session is a 500 with a request id in the body and the log, not a
client error."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from websockets.asyncio.client import connect as ws_connect

from avatar_server import session as session_module
from avatar_server.audio import Resampler
from avatar_server.engine import Engine
from avatar_server.feed import AudioFeed
from avatar_server.peer import AvatarPeer
from avatar_server.session import Session
from avatar_server.testing import fake_server
from server_helpers import error_records, offer_sdp

pytestmark = pytest.mark.usefixtures("loopback_ice")

PROBLEM = "application/problem+json"
WS_NORMAL = 1000


def unique(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """The capture handler sits on nested loggers, so one record can arrive twice."""
    return list({id(record): record for record in records}.values())


async def freed(state: Any, timeout: float = 8.0) -> None:
    """No session, engine slot, open stream, VAD model or session task is left."""
    pipe = state.handle.pipe
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("s_")]
        if not (len(state.manager) or state.engine.slot_count or pipe.open_streams or state.voice.active or tasks):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not freed: sessions={len(state.manager)} slots={state.engine.slot_count} "
                         f"streams={pipe.open_streams} vad={state.voice.active} tasks={tasks}")


def inject(monkeypatch: pytest.MonkeyPatch, where: str, armed: threading.Event) -> str:
    """Make one part of a session raise once `armed` is set; returns what the log names."""
    if where == "feed":
        push = AudioFeed._push

        def failing_push(self: AudioFeed, pcm: np.ndarray, now: float, detect: bool) -> None:
            if armed.is_set():
                raise RuntimeError("injected feed failure")
            push(self, pcm, now, detect)

        monkeypatch.setattr(AudioFeed, "_push", failing_push)
        return "task feed failed"
    if where == "ingest":
        class FailingResampler(Resampler):
            def frame(self, frame: Any) -> np.ndarray:
                if armed.is_set():
                    raise RuntimeError("injected ingest failure")
                return super().frame(frame)

        monkeypatch.setattr(session_module, "Resampler", FailingResampler)
        return "task ingest failed"
    on_chunk = Session._on_chunk

    def failing_chunk(self: Session, *args: Any) -> None:
        if armed.is_set():
            raise RuntimeError("injected chunk handler failure")
        on_chunk(self, *args)

    monkeypatch.setattr(Session, "_on_chunk", failing_chunk)
    return "handler failing_chunk failed"


@pytest.mark.parametrize("where", ["feed", "ingest", "engine_handler"])
async def test_a_failing_task_ends_its_session_and_frees_its_slot(monkeypatch: pytest.MonkeyPatch,
                                                                    where: str) -> None:
    armed = threading.Event()
    logged = inject(monkeypatch, where, armed)
    async with fake_server() as (url, state):
        peer = AvatarPeer(url, mic=np.full(16000 * 20, 0.1, np.float32), keep_images=False)
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            answer = await peer.connect(http)
            assert answer.status_code == 201, answer.text
            await peer.wait_connected()
            events = await ws_connect(url.replace("http", "ws") + answer.json()["events_url"])
            assert json.loads(await events.recv())["type"] == "state"
            with error_records() as errors:
                armed.set()
                error = None
                async for message in events:  # until the server closes the socket
                    event = json.loads(message)
                    if event["type"] == "error":
                        error = event
                await freed(state)
            assert error is not None and error["code"] == "internal_error", error
            assert events.close_code == WS_NORMAL
            records = unique(errors.records)
            assert len(records) == 1 and logged in records[0].getMessage(), [r.getMessage() for r in records]
            assert records[0].exc_info is not None and "injected" in str(records[0].exc_info[1])
            metrics = (await http.get("/metrics")).text
            assert 'omnilive_sessions_ended_total{reason="internal_error"} 1.0' in metrics
            armed.clear()
            again = await http.post("/v1/sessions", json={"sdp": await offer_sdp()})  # the slot is free again
            assert again.status_code == 201, again.text
            assert (await http.delete(again.headers["location"])).status_code == 204
        await peer.close()


def fail_at(monkeypatch: pytest.MonkeyPatch, state: Any, where: str) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"injected failure in {where}")

    if where == "stream_options":   # before the peer connection negotiates
        monkeypatch.setattr(state.handle, "make_options", boom)
    elif where == "add_track":      # during negotiation, between aiortc's steps (was a 400 bad_sdp)
        monkeypatch.setattr(RTCPeerConnection, "addTrack", boom)
    else:                           # after: the session has its tracks and is registered
        monkeypatch.setattr(Engine, "add", boom)


@pytest.mark.parametrize("where", ["stream_options", "add_track", "engine_add"])
async def test_an_internal_error_at_creation_is_500_with_a_request_id(monkeypatch: pytest.MonkeyPatch,
                                                                       where: str) -> None:
    async with fake_server() as (url, state), httpx.AsyncClient(base_url=url, timeout=20) as http:
        sdp = await offer_sdp()
        fail_at(monkeypatch, state, where)
        with error_records() as errors:
            responses = [await http.post("/v1/sessions", json={"sdp": sdp}),
                         await http.post("/v1/whep", content=sdp, headers={"content-type": "application/sdp"})]
            await freed(state)
        records = unique(errors.records)
        assert len(records) == len(responses), [r.getMessage() for r in records]
        for response, record in zip(responses, records):
            assert response.status_code == 500, response.text
            assert response.headers["content-type"].startswith(PROBLEM)
            body = response.json()
            assert body["type"] == "urn:omnilive:problem:internal_error" and "injected" not in response.text
            assert body["request_id"] == response.headers["x-request-id"]
            assert body["request_id"] in record.getMessage() and record.exc_info is not None
        monkeypatch.undo()
        created = await http.post("/v1/sessions", json={"sdp": sdp})  # nothing was left behind
        assert created.status_code == 201, created.text
        assert (await http.delete(created.headers["location"])).status_code == 204


async def test_an_unexpected_route_error_is_500_with_a_request_id(monkeypatch: pytest.MonkeyPatch) -> None:
    async with fake_server() as (url, state), httpx.AsyncClient(base_url=url, timeout=20) as http:
        def boom() -> None:
            raise RuntimeError("injected listing failure")

        monkeypatch.setattr(state.avatars, "list", boom)
        with error_records() as errors:
            response = await http.get("/v1/avatars")
        assert response.status_code == 500 and response.headers["content-type"].startswith(PROBLEM)
        request_id = response.json()["request_id"]
        assert "injected" not in response.text
        assert any(request_id in record.getMessage() and record.exc_info for record in errors.records)


@pytest.mark.parametrize("socket", ["events", "audio"])
async def test_a_bug_handling_a_socket_message_ends_the_session_not_just_the_socket(
        monkeypatch: pytest.MonkeyPatch, socket: str) -> None:
    """Before, the handlers' catch for a closed socket (RuntimeError) also swallowed bugs: no log, the socket
    closed, the session went on."""
    def boom(self: Session) -> None:
        raise RuntimeError("injected interrupt failure")  # the type Starlette raises for a closed socket

    monkeypatch.setattr(Session, "interrupt", boom)
    command = {"events": {"type": "interrupt"}, "audio": {"type": "clear"}}[socket]
    async with fake_server() as (url, state), httpx.AsyncClient(base_url=url, timeout=20) as http:
        answer = (await http.post("/v1/sessions", json={"sdp": await offer_sdp()})).json()
        with error_records() as errors:
            async with ws_connect(url.replace("http", "ws") + answer[f"{socket}_url"]) as ws:
                if socket == "events":
                    assert json.loads(await ws.recv())["type"] == "state"
                await ws.send(json.dumps(command))
                received = [json.loads(message) async for message in ws]
            await freed(state)
        assert [e["code"] for e in received if e["type"] == "error"] == ["internal_error"], received
        assert ws.close_code == WS_NORMAL
        records = unique(errors.records)
        assert len(records) == 1 and records[0].exc_info and "injected" in str(records[0].exc_info[1])
