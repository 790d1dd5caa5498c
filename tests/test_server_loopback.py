"""End-to-end over real aiortc peers on loopback: lip sync as a browser receives it, freeing sessions.

These stay on real time: they measure what aiortc's transport (encoders, RTP, ICE, DTLS) does. Pacing, lip sync at
the tracks, barge-in and the session timers run on virtual time in test_server_pacing.py.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect as ws_connect

from avatar_server.peer import AvatarPeer, Received
from avatar_server.testing import fake_server, read_barcode, read_mouth
from server_helpers import best_lag, envelopes, tone_bursts

pytestmark = pytest.mark.usefixtures("loopback_ice")

FRAME_S = 1 / 25


def received_envelopes(received: Received, start: float) -> tuple[np.ndarray, np.ndarray]:
    """Mouth-open and sound-on on the RTP arrival clock from `start` on."""
    video = [(received.packet_arrival("video", pts) or t, read_mouth(img) > 0.5) for t, pts, img in received.video]
    audio = []
    for t, pts, pcm in received.audio:
        rms = float(np.sqrt(np.mean((pcm.astype(np.float64) / 32768) ** 2)))
        audio.append((received.packet_arrival("audio", pts) or t, rms > 0.1))
    return envelopes(video, audio, start)


async def test_lips_in_sync_with_returned_audio_as_received() -> None:
    async with fake_server() as (url, state):
        peer = AvatarPeer(url, mic=tone_bursts(6.0), options={"width": 192})
        async with httpx.AsyncClient() as http:
            assert (await peer.connect(http)).status_code == 201
            await peer.wait_connected()
            await asyncio.sleep(5.0)
            info = (await http.get(f"{url}/v1/sessions/{peer.session['session_id']}")).json()
        await peer.close()

    frames = peer.received.video
    arrivals = np.array([t for t, _, _ in frames])
    assert len(frames) > 75 and {img.shape for _, _, img in frames} == {(192, 192, 3)}

    times = [read_barcode(img) for _, _, img in frames[-50:]]
    assert np.all(np.diff(times) >= 0), "frames arrive in audio-time order"
    assert any(read_mouth(img) > 0.5 for _, _, img in frames) and any(read_mouth(img) < 0.1 for _, _, img in frames)

    video, audio = received_envelopes(peer.received, start=arrivals[0] + 1.0)
    lag, agreement = best_lag(video, audio)
    assert agreement > 0.85, f"mouth does not follow the returned audio (agreement {agreement:.2f})"
    assert abs(lag) <= FRAME_S, f"lips and voice are {lag * 1000:.0f} ms apart"
    assert info["stats"]["latency_ms_p50"] is not None
    stages = info["stats"]["stages"]
    assert {"queue", "sample", "decode", "encode"} <= set(stages), f"the stats say where the time goes: {stages}"
    assert all(0 <= stage["p50_ms"] <= stage["p95_ms"] for stage in stages.values())


async def _resources_freed(state, pipe, session_id: str, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith(session_id)]
        if (not len(state.manager) and not state.engine.slot_count and not pipe.open_streams and not tasks
                and not state.voice.active):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"session not freed: sessions={len(state.manager)} slots={state.engine.slot_count} "
                         f"streams={pipe.open_streams} vad={state.voice.active} tasks={tasks}")


@pytest.mark.parametrize("how", ["delete", "peer_close", "abrupt", "mid_ice"])
async def test_disconnect_frees_session_tasks_and_engine_slot(how: str) -> None:
    sessions = {"connect_timeout_s": 1.0, "reconnect_grace_s": 0.2}
    async with fake_server(sessions=sessions) as (url, state):
        pipe = state.handle.pipe
        peer = AvatarPeer(url, mic=tone_bursts(3.0))
        async with httpx.AsyncClient() as http:
            if how == "mid_ice":   # the client never applies the answer: ICE never completes
                peer.pc.addTransceiver("video", direction="recvonly")
                await peer.pc.setLocalDescription(await peer.pc.createOffer())
                response = await http.post(f"{url}/v1/sessions", json={"sdp": peer.pc.localDescription.sdp})
                session_id = response.json()["session_id"]
            else:
                response = await peer.connect(http)
                session_id = response.json()["session_id"]
                await peer.wait_connected()
                events = await ws_connect(url.replace("http", "ws") + response.json()["events_url"])
                await asyncio.sleep(0.8)
                assert state.engine.slot_count == 1 and pipe.open_streams == 1 and state.voice.active == 1
                session = state.manager.get(session_id)
                assert len(session.tasks) >= 3
                if how == "delete":
                    assert (await http.delete(f"{url}/v1/sessions/{session_id}")).status_code == 204
                    assert (await http.delete(f"{url}/v1/sessions/{session_id}")).status_code == 404
                elif how == "peer_close":
                    await peer.pc.close()
                elif how == "abrupt":   # tab killed: sockets vanish without goodbye
                    await peer.vanish()
                    events.transport.abort()
            await _resources_freed(state, pipe, session_id)
            reasons = {"delete": "deleted", "peer_close": "peer_closed", "abrupt": "events_disconnected",
                       "mid_ice": "connect_timeout"}
            metrics = (await http.get(f"{url}/metrics")).text
            assert f'omnilive_sessions_ended_total{{reason="{reasons[how]}"}} 1.0' in metrics
        await peer.close()
