"""End-to-end over real aiortc peers on loopback: pacing, lip sync, barge-in, freeing sessions."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect as ws_connect

from avatar_server.peer import AvatarPeer, Received
from avatar_server.testing import fake_server, read_barcode, read_mouth

pytestmark = pytest.mark.usefixtures("loopback_ice")

FPS = 25
FRAME_S = 1 / FPS
CHUNK_FRAMES = 4
RATE = 16000
GRID_S = 0.005


def tone_bursts(seconds: float, pattern_ms: tuple[int, ...] = (240, 360, 160, 440, 200, 280, 320, 120)) -> np.ndarray:
    """A 300 Hz tone switched on and off in an irregular pattern (so the lag search has one answer)."""
    t = np.arange(int(seconds * RATE)) / RATE
    on = np.zeros(t.size, bool)
    edge, state, i = 0.0, False, 0
    while edge < seconds:
        length = pattern_ms[i % len(pattern_ms)] / 1000
        on[(t >= edge) & (t < edge + length)] = state
        edge, state, i = edge + length, not state, i + 1
    return (0.5 * np.sin(2 * np.pi * 300 * t) * on).astype(np.float32)


def delivered_fps(received: Received, skip_s: float = 1.0) -> float:
    """Frames received per second of the sender's 90 kHz clock, after the first second. Missing or
    skipped frames lower it; this busy test process reading late does not."""
    pts = np.array([p for _, p, _ in received.video], dtype=np.float64) / 90000
    window = pts[pts > pts[0] + skip_s]
    return (len(window) - 1) / (window[-1] - window[0])


def envelopes(received: Received, start: float) -> tuple[np.ndarray, np.ndarray]:
    """Mouth-open and sound-on, sampled every 5 ms on the RTP arrival clock from `start` on."""
    video = [(received.packet_arrival("video", pts) or t, read_mouth(img) > 0.5) for t, pts, img in received.video]
    audio = []
    for t, pts, pcm in received.audio:
        rms = float(np.sqrt(np.mean((pcm.astype(np.float64) / 32768) ** 2)))
        audio.append((received.packet_arrival("audio", pts) or t, rms > 0.1))
    end = min(video[-1][0], audio[-1][0])
    grid = np.arange(start, end, GRID_S)

    def hold(events: list[tuple[float, bool]]) -> np.ndarray:
        times = np.array([e[0] for e in events])
        values = np.array([e[1] for e in events])
        idx = np.searchsorted(times, grid, side="right") - 1
        return np.where(idx >= 0, values[np.clip(idx, 0, None)], False)

    return hold(video), hold(audio)


def best_lag(video: np.ndarray, audio: np.ndarray, max_lag_s: float = 0.3) -> tuple[float, float]:
    """(lag, agreement): video[i] best matches audio[i - lag]; positive lag = video behind audio."""
    best = (0.0, -1.0)
    n = int(max_lag_s / GRID_S)
    for k in range(-n, n + 1):
        v = video[max(k, 0): len(video) + min(k, 0)]
        a = audio[max(-k, 0): len(audio) - max(k, 0)]
        score = float(np.mean(v == a))
        if score > best[1]:
            best = (k * GRID_S, score)
    return best


async def test_frames_paced_and_lips_in_sync_with_returned_audio() -> None:
    async with fake_server() as (url, state):
        peer = AvatarPeer(url, mic=tone_bursts(6.0))
        async with httpx.AsyncClient() as http:
            assert (await peer.connect(http)).status_code == 201
            await peer.wait_connected()
            await asyncio.sleep(5.0)
            info = (await http.get(f"{url}/v1/sessions/{peer.session['session_id']}")).json()
        await peer.close()

    frames = peer.received.video
    arrivals = np.array([t for t, _, _ in frames])
    assert abs(delivered_fps(peer.received) - FPS) <= 0.1 * FPS

    times = [read_barcode(img) for _, _, img in frames[-50:]]
    assert np.all(np.diff(times) >= 0), "frames arrive in audio-time order"
    assert any(read_mouth(img) > 0.5 for _, _, img in frames) and any(read_mouth(img) < 0.1 for _, _, img in frames)

    video, audio = envelopes(peer.received, start=arrivals[0] + 1.0)
    lag, agreement = best_lag(video, audio)
    assert agreement > 0.85, f"mouth does not follow the returned audio (agreement {agreement:.2f})"
    assert abs(lag) <= FRAME_S, f"lips and voice are {lag * 1000:.0f} ms apart"
    assert info["stats"]["latency_ms_p50"] is not None
    stages = info["stats"]["stages"]
    assert {"queue", "sample", "decode"} <= set(stages), f"the stats say where the time goes: {stages}"
    assert all(0 <= stage["p50_ms"] <= stage["p95_ms"] for stage in stages.values())


@pytest.mark.parametrize("how", ["events_interrupt", "audio_clear"])
async def test_barge_in_stops_speech_within_one_chunk(how: str) -> None:
    async with fake_server() as (url, state):
        peer = AvatarPeer(url)
        async with httpx.AsyncClient() as http:
            assert (await peer.connect(http)).status_code == 201
        await peer.wait_connected()
        base = url.replace("http", "ws") + f"/v1/sessions/{peer.session['session_id']}"
        async with ws_connect(base + "/events") as events, ws_connect(base + "/audio?sample_rate=16000") as audio:
            states: list[tuple[float, str]] = []
            reader = asyncio.create_task(_read_states(events, states))
            tone = (0.5 * np.sin(2 * np.pi * 300 * np.arange(RATE * 6) / RATE) * 32767).astype("<i2")
            for piece in np.array_split(tone, 12):
                await audio.send(piece.tobytes())
            while not any(read_mouth(img) > 0.5 for _, _, img in peer.received.video[-5:]):
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)                              # well into speech
            if how == "events_interrupt":
                await events.send(json.dumps({"type": "interrupt"}))
            else:
                await audio.send(json.dumps({"type": "clear"}))
            cleared = time.monotonic()
            await asyncio.sleep(1.5)
            reader.cancel()
            session = state.manager.get(peer.session["session_id"])
            sent = (session.video.started_at, session.audio.started_at, session.interrupted_at)
        await peer.close()

    # Judge by when the server sent each frame/packet (the pts clock), not by when this busy
    # process got round to reading it: speech must stop within one chunk of the barge-in.
    session_video_start, session_audio_start, interrupted = sent
    chunk_s = CHUNK_FRAMES * FRAME_S
    after = [read_mouth(img) for _, pts, img in peer.received.video if session_video_start + pts / 90000 > interrupted]
    assert len(after) > 25
    open_after = sum(mouth > 0.5 for mouth in after)
    assert open_after <= CHUNK_FRAMES, f"{open_after} open-mouth frames after the barge-in"
    loud = [pts / 48000 for _, pts, pcm in peer.received.audio
            if session_audio_start + pts / 48000 > interrupted + chunk_s
            and np.sqrt(np.mean((pcm / 32768.0) ** 2)) > 0.05]
    assert not loud, f"speech still audible after the barge-in: {loud[:3]}"
    assert ("speaking" in [s for t, s in states if t < cleared]
            and states[-1][1] in ("silent", "idle")), states


async def _read_states(events, states: list[tuple[float, str]]) -> None:
    """Collect (arrival, state) from the events socket."""
    async for message in events:
        event = json.loads(message)
        if event["type"] == "state":
            states.append((time.monotonic(), event["state"]))


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


@pytest.mark.parametrize("how", ["delete", "peer_close", "abrupt", "mid_ice", "duration"])
async def test_disconnect_frees_session_tasks_and_engine_slot(how: str) -> None:
    sessions = {"connect_timeout_s": 1.0, "reconnect_grace_s": 0.2, "max_duration_s": 2.5 if how == "duration" else 60}
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
                       "mid_ice": "connect_timeout", "duration": "duration_limit"}
            metrics = (await http.get(f"{url}/metrics")).text
            assert f'omnilive_sessions_ended_total{{reason="{reasons[how]}"}} 1.0' in metrics
        await peer.close()


async def test_requested_fps_and_size_are_honoured() -> None:
    async with fake_server() as (url, state):
        peer = AvatarPeer(url, mic=tone_bursts(4.0), options={"fps": 15, "width": 192})
        async with httpx.AsyncClient() as http:
            assert (await peer.connect(http)).status_code == 201
            await peer.wait_connected()
            await asyncio.sleep(3.5)
        await peer.close()
    frames = peer.received.video
    assert {img.shape for _, _, img in frames} == {(192, 192, 3)}
    assert abs(delivered_fps(peer.received) - 15) <= 1.5
    assert any(read_mouth(img) > 0.5 for _, _, img in frames)
