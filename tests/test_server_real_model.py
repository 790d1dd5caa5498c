"""The server on the real model code path: the tiny AvatarPipeline (trained weights when present)."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from avatar_server.peer import AvatarPeer
from avatar_server.runtime import load_pipeline
from avatar_server.settings import load_settings
from avatar_server.testing import TEST_CONFIG, fake_server

pytestmark = [pytest.mark.usefixtures("loopback_ice"), pytest.mark.slow]


async def test_real_tiny_model_streams_generated_frames_over_webrtc() -> None:
    settings = load_settings(TEST_CONFIG, environ={}, model={"weights": "weights/tiny", "config": "tiny"})
    handle = load_pipeline(settings)  # weights/tiny when trained, else a random-init tiny model
    assert handle.source.endswith("tiny")
    speech = (0.3 * np.sin(2 * np.pi * 220 * np.arange(16000 * 30) / 16000)).astype(np.float32)
    async with fake_server(handle=handle, model={"steps": 1}) as (url, state):
        peer = AvatarPeer(url, mic=speech)
        async with httpx.AsyncClient() as http:
            assert (await peer.connect(http)).status_code == 201
            await peer.wait_connected()
            session = state.manager.get(peer.session["session_id"])
            deadline = time.monotonic() + 60
            while session.counters.frames_generated_sent < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert session.counters.frames_generated_sent >= 4, "no generated frame reached the client"
            assert state.engine.stats.chunks >= 1 and state.engine.error is None
            stats = (await http.get(f"{url}/v1/sessions/{session.id}")).json()["stats"]
            assert stats["latency_ms_p50"] is not None
        await peer.close()
    shapes = {img.shape for _, _, img in peer.received.video}
    assert shapes == {(handle.pipe.config.height, handle.pipe.config.width, 3)}
    assert state.engine.slot_count == 0


async def test_an_upload_without_a_findable_mouth_is_refused_and_a_face_is_accepted() -> None:
    """With the guide model, POST /v1/avatars locates the mouth: a flat picture is a 422 problem, the
    default avatar's picture is stored (its mouth bank drawn once, its idle image the model's own); a `mouth`
    given with the upload is used instead of the locator's, and a malformed one is a 422 problem."""
    settings = load_settings(TEST_CONFIG, environ={}, model={"weights": "weights/tiny", "config": "tiny"})
    handle = load_pipeline(settings)
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), (120, 160, 200)).save(buffer, format="PNG")
    face = (Path(__file__).resolve().parent.parent / "avatar_server" / "assets" / "default_avatar.png").read_bytes()
    async with fake_server(handle=handle) as (url, state):
        async with httpx.AsyncClient() as http:
            refused = await http.post(f"{url}/v1/avatars", files={"image": ("flat.png", buffer.getvalue(), "image/png")})
            assert refused.status_code == 422 and refused.headers["content-type"].startswith("application/problem+json")
            assert "mouth" in refused.json()["detail"]
            stored = await http.post(f"{url}/v1/avatars", files={"image": ("face.png", face, "image/png")})
            assert stored.status_code == 201, stored.text
            avatar = state.avatars.get(stored.json()["id"])
            assert avatar.reference.mouth_bank is not None
            assert np.array_equal(avatar.idle, avatar.reference.still)  # idle = the model's own shut-mouth frame
            placed = await http.post(f"{url}/v1/avatars", files={"image": ("face.png", face, "image/png")},
                                     data={"mouth": "0.4,0.6,0.2"})
            assert placed.status_code == 201, placed.text
            box = state.avatars.get(placed.json()["id"]).reference.mouth_bank.box
            assert (box.x, box.y, box.width) == pytest.approx((0.4, 0.6, 0.2))  # a square picture: crop = image
            for bad in ("0.5,0.6", "a,b,c", "0.5,1.7,0.2", "0.5,0.6,0.95"):
                problem = await http.post(f"{url}/v1/avatars?mouth={bad}", content=face,
                                          headers={"content-type": "image/png"})
                assert problem.status_code == 422 and "mouth" in problem.json()["detail"], (bad, problem.text)
