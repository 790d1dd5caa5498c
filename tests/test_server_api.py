"""HTTP and WebSocket API: problem bodies, admission, avatars, auth, limits, probes (fake generator)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import struct
import zlib

import httpx
import pytest
from aiortc import RTCPeerConnection
from PIL import Image
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from avatar_server.commands import serve
from avatar_server.settings import load_settings
from avatar_server.testing import fake_server
from model.data.keypoints import NUM_KEYPOINTS
from model.errors import InputError

pytestmark = pytest.mark.usefixtures("loopback_ice")

PROBLEM = "application/problem+json"


async def make_offer(video: bool = True, audio: bool = True) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    if video:
        pc.addTransceiver("video", direction="recvonly")
    if audio:
        pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def png(width: int, height: int, color: tuple[int, int, int] = (200, 150, 120)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


async def closed_with(ws_url: str) -> int:
    """The close code a refused WebSocket gets."""
    async with ws_connect(ws_url) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    return closed.value.rcvd.code


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
    return body


async def test_bad_offers_and_options_get_problem_bodies() -> None:
    async with fake_server() as (url, state), httpx.AsyncClient(base_url=url) as http:
        assert_problem(await http.post("/v1/sessions", json={"sdp": "v=0 this is not sdp"}), 400)
        pc, audio_only = await make_offer(video=False)
        body = assert_problem(await http.post("/v1/sessions", json={"sdp": audio_only}), 400)
        assert "video" in body["detail"]
        await pc.close()
        pc, sdp = await make_offer()
        assert "nobody" in assert_problem(await http.post("/v1/sessions", json={"sdp": sdp, "avatar": "nobody"}),
                                          404)["detail"]
        assert_problem(await http.post("/v1/sessions", json={"sdp": sdp, "fps": 500}), 422)
        assert_problem(await http.post("/v1/sessions", json={"sdp": sdp, "width": 99999}), 422)
        assert_problem(await http.post("/v1/sessions", json={"type": "offer"}), 422)
        assert_problem(await http.post("/v1/sessions", content=b"{", headers={"content-type": "application/json"}),
                       422)
        assert_problem(await http.post("/v1/sessions", json={"sdp": "x" * 300_000}), 413)
        assert_problem(await http.get("/v1/nothing-here"), 404)
        await pc.close()
        assert len(state.manager) == 0 and state.engine.slot_count == 0


async def test_session_limit_gives_503_with_retry_after() -> None:
    async with fake_server(sessions={"max_sessions": 1}) as (url, state), httpx.AsyncClient(base_url=url) as http:
        pcs = [await make_offer() for _ in range(2)]
        first = await http.post("/v1/sessions", json={"sdp": pcs[0][1], "text": "hello"})
        assert first.status_code == 201
        answer = first.json()
        assert answer["type"] == "answer" and answer["sdp"].startswith("v=0")
        assert first.headers["location"] == f"/v1/sessions/{answer['session_id']}"
        assert answer["ice_servers"] == [] and answer["events_url"].endswith("/events")
        assert_problem(await http.post("/v1/whep", content=pcs[1][1], headers={"content-type": "text/plain"}), 415)
        refused = await http.post("/v1/sessions", json={"sdp": pcs[1][1]})
        assert_problem(refused, 503)
        assert refused.headers["retry-after"] == "3"
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.delete(f"/v1/sessions/{answer['session_id']}")).status_code == 204
        assert (await http.get("/readyz")).status_code == 200
        whep = await http.post("/v1/whep", content=pcs[1][1], headers={"content-type": "application/sdp"})
        assert whep.status_code == 201 and whep.headers["content-type"] == "application/sdp"
        assert whep.text.startswith("v=0") and whep.headers["location"].startswith("/v1/sessions/s_")
        for pc, _ in pcs:
            await pc.close()
    # server shutdown ended the WHEP session and freed what it held
    assert len(state.manager) == 0 and state.engine.slot_count == 0 and state.handle.pipe.open_streams == 0


async def test_avatar_upload_validation_and_use() -> None:
    async with fake_server() as (url, state), httpx.AsyncClient(base_url=url) as http:
        created = await http.post("/v1/avatars", files={"image": ("me.png", png(160, 120), "image/png")},
                                  data={"name": "me"})
        assert created.status_code == 201, created.text
        avatar = created.json()
        assert avatar["name"] == "me" and (avatar["width"], avatar["height"]) == (160, 120)
        raw = await http.post("/v1/avatars?name=raw", content=png(96, 96), headers={"content-type": "image/png"})
        assert raw.status_code == 201
        listed = [a["id"] for a in (await http.get("/v1/avatars")).json()["avatars"]]
        assert listed[0] == "default" and avatar["id"] in listed and raw.json()["id"] in listed

        pc, sdp = await make_offer()
        assert (await http.post("/v1/sessions", json={"sdp": sdp, "avatar": avatar["id"]})).status_code == 201
        await pc.close()

        assert_problem(await http.post("/v1/avatars", content=b"x" * 300_000), 413)
        assert_problem(await http.post("/v1/avatars", content=png_header_only(30000, 30000)), 413)
        assert_problem(await http.post("/v1/avatars", content=b"just some text, not an image"), 415)
        gif = io.BytesIO()
        Image.new("RGB", (100, 100)).save(gif, "GIF")
        assert_problem(await http.post("/v1/avatars", content=gif.getvalue()), 415)
        assert_problem(await http.post("/v1/avatars", content=png(20, 20)), 422)
        assert_problem(await http.post("/v1/avatars", content=png(200, 200)[:120]), 422)
        assert_problem(await http.post("/v1/avatars", content=b""), 422)
        assert_problem(await http.post("/v1/avatars", files={"other": ("a.png", png(100, 100))}), 422)

        assert_problem(await http.delete("/v1/avatars/default"), 409)
        assert (await http.delete(f"/v1/avatars/{avatar['id']}")).status_code == 204
        assert_problem(await http.delete(f"/v1/avatars/{avatar['id']}"), 404)


async def test_api_keys_and_session_tokens() -> None:
    async with fake_server(auth={"api_keys": ["k-one"]}) as (url, state), httpx.AsyncClient(base_url=url) as http:
        refused = await http.get("/v1/avatars")
        assert_problem(refused, 401)
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert_problem(await http.get("/v1/avatars", headers={"Authorization": "Bearer wrong"}), 401)
        key = {"Authorization": "Bearer k-one"}
        assert (await http.get("/v1/avatars", headers=key)).status_code == 200
        issued = (await http.post("/v1/tokens", headers=key)).json()
        assert issued["expires_in"] == 600
        token = {"Authorization": f"Bearer {issued['token']}"}
        assert (await http.get("/v1/ice-servers", headers=token)).status_code == 200
        assert_problem(await http.post("/v1/tokens", headers=token), 401)  # a token cannot mint tokens
        assert (await http.get("/healthz")).status_code == 200          # probes stay open

        pc, sdp = await make_offer()
        answer = (await http.post("/v1/sessions", json={"sdp": sdp}, headers=token)).json()
        ws_url = url.replace("http", "ws") + answer["events_url"]
        assert await closed_with(ws_url) == 4401
        async with ws_connect(f"{ws_url}?token={answer['token']}") as events:
            assert json.loads(await events.recv()) == {"type": "state", "state": "connecting"}
        await pc.close()


async def test_bad_socket_messages_get_error_events_and_the_session_lives_on() -> None:
    limits = {"max_ws_message_bytes": 4096}
    async with fake_server(limits=limits) as (url, state), httpx.AsyncClient(base_url=url) as http:
        pc, sdp = await make_offer()
        answer = (await http.post("/v1/sessions", json={"sdp": sdp})).json()
        base = url.replace("http", "ws") + f"/v1/sessions/{answer['session_id']}"
        async with ws_connect(base + "/events") as events:
            assert json.loads(await events.recv())["type"] == "state"
            bad = ["not json", b"\x00\x01", json.dumps({"type": "dance"}), json.dumps([1, 2]),
                   json.dumps({"type": "pose", "keypoints": [[0.5, 0.5]]}),
                   json.dumps({"type": "pose", "keypoints": "nope"}),
                   json.dumps({"type": "set_text", "text": 5}), json.dumps({"type": "set_text", "text": "x" * 5000})]
            for message in bad:
                await events.send(message)
            codes = []
            while len(codes) < len(bad):
                event = json.loads(await asyncio.wait_for(events.recv(), 5))
                if event["type"] == "error":
                    codes.append(event["code"])
            assert codes == ["bad_message", "bad_message", "unknown_command", "bad_message", "bad_message",
                             "bad_message", "bad_message", "message_too_large"]
            await events.send(json.dumps({"type": "set_text", "text": "calm"}))
            await events.send(json.dumps({"type": "pose", "keypoints": [[0.5, 0.4, 1.0]] * NUM_KEYPOINTS}))
            await events.send(json.dumps({"type": "interrupt"}))
        async with ws_connect(base + "/audio?sample_rate=24000") as audio:
            await audio.send(b"\x00\x01\x02")                       # odd byte count
            assert json.loads(await audio.recv())["code"] == "bad_audio"
            await audio.send("{}")
            assert json.loads(await audio.recv())["code"] == "unknown_command"
            await audio.send(b"\x00\x00" * 2400)                     # 100 ms at 24 kHz: fine
            await audio.send(json.dumps({"type": "flush"}))
        async with ws_connect(base + "/audio?sample_rate=12") as audio:
            assert json.loads(await audio.recv())["code"] == "bad_sample_rate"
        assert await closed_with(url.replace("http", "ws") + "/v1/sessions/nope/events") == 4404
        assert (await http.get(f"/v1/sessions/{answer['session_id']}")).status_code == 200
        async with ws_connect(base + "/audio") as audio:   # ending the session closes its sockets
            assert (await http.delete(f"/v1/sessions/{answer['session_id']}")).status_code == 204
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(audio.recv(), 5)
        await pc.close()


async def test_probes_metrics_openapi_cors_and_static() -> None:
    async with fake_server() as (url, state), httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = (await http.get("/readyz")).json()
        assert ready["status"] == "ready" and ready["max_sessions"] == 2
        metrics = (await http.get("/metrics")).text
        for name in ("omnilive_sessions_active", "omnilive_latency_seconds_bucket", "omnilive_frames_generated_total",
                     "omnilive_target_fps", "omnilive_engine_queue_depth", "omnilive_device_memory_bytes"):
            assert name in metrics
        paths = (await http.get("/openapi.json")).json()["paths"]
        assert {"/v1/sessions", "/v1/sessions/{session_id}", "/v1/avatars", "/v1/tokens", "/v1/ice-servers"} <= set(paths)
        preflight = {"Origin": "http://allowed.example", "Access-Control-Request-Method": "POST"}
        allowed = await http.options("/v1/sessions", headers=preflight)
        assert allowed.headers.get("access-control-allow-origin") == "http://allowed.example"
        other = await http.options("/v1/sessions", headers={**preflight, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        client = state.settings.path(state.settings.client_dir)
        demo = await http.get("/")
        if (client / "demo" / "index.html").is_file():
            assert demo.status_code == 200 and "html" in demo.headers["content-type"]
        else:
            assert_problem(demo, 404)


def test_serve_rejects_bad_settings_with_a_clear_message(tmp_path) -> None:
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    bad = tmp_path / "bad.yaml"
    bad.write_text("sessions:\n  max_sessions: -1\nice_servers: [{urls: ['http://x']}]\nnot_a_key: 1\n")
    with pytest.raises(InputError) as error:  # the CLI prints it and exits with 2
        serve.run(parser.parse_args(["serve", "--config", str(bad)]))
    assert all(s in str(error.value) for s in ("sessions.max_sessions", "ice_servers.0", "not_a_key"))
    with pytest.raises(InputError, match="not found"):
        serve.run(parser.parse_args(["serve", "--config", str(tmp_path / "missing.yaml")]))
    with pytest.raises(InputError, match="OMNILIVE_SESSIONS__MAX_SESSIONS"):
        load_settings(environ={"OMNILIVE_SESSIONS__MAX_SESSIONS": "[unclosed"})
