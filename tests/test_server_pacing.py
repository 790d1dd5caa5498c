"""A session on virtual time: pacing, lip sync at the tracks, barge-in and the session's timers.

The server's own pieces (SessionManager, Session, playout clock, tracks, engine, VAD worker) run on a VirtualClock;
what aiortc's senders do is done by two tasks that call the tracks' `recv()` in a loop, and the engine and VAD
workers are stepped on the test's thread before every instant. Each figure is exact, whatever the machine's load;
what the real transport adds is measured in test_server_loopback.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import AsyncIterator

import numpy as np
import pytest
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from avatar_server.aiortc_adapter import AIORTC_AUDIO_BUFFER, RECEIVER_JITTER_BUFFER, LiveAudioJitterBuffer
from avatar_server.app import build_state
from avatar_server.avatars import DEFAULT_AVATAR_ID
from avatar_server.events import Event
from avatar_server.server_state import ServerState
from avatar_server.session import Session, SessionOptions
from avatar_server.settings import load_settings
from avatar_server.testing import TEST_CONFIG, fake_pipeline, read_barcode, read_mouth
from avatar_server.tracks import AUDIO_PTIME_S, VIDEO_CLOCK_RATE
from server_helpers import best_lag, envelopes, offer_sdp, tone_bursts
from virtual_time import VirtualClock

pytestmark = pytest.mark.usefixtures("loopback_ice")  # the session's peer connection gathers loopback candidates

CHUNK_FRAMES = 4  # the fake generator's
OPEN_WAIT_S = 5.0  # real seconds for the engine's side thread to open the stream


@dataclass
class Sent:
    """What the tracks handed to the (stand-in) senders, stamped with the virtual time they did."""

    video: list[tuple[float, int, np.ndarray]] = field(default_factory=list)  # (time, pts, rgb [H, W, 3])
    audio: list[tuple[float, int, np.ndarray]] = field(default_factory=list)  # (time, pts, int16 [n])
    states: list[tuple[float, str]] = field(default_factory=list)             # (time, state) from the events


class VirtualSession:
    """A session built by the server's SessionManager on a virtual clock, its peer connected by decree."""

    def __init__(self, state: ServerState, clock: VirtualClock, session: Session) -> None:
        self.state, self.clock, self.session = state, clock, session
        self.sent = Sent()
        self.senders: list[asyncio.Task] = []
        self._events: asyncio.Task | None = None

    def connect(self) -> None:
        """What aiortc does once ICE and DTLS are up: the state change, then its senders pull media."""
        self.session.on_connection_state("connected")
        self._events = asyncio.create_task(self._read_events(self.session.attach()))
        self.start_senders()

    def start_senders(self) -> None:
        self.senders = [asyncio.create_task(self._send_video()), asyncio.create_task(self._send_audio())]

    async def stop_senders(self) -> None:
        for task in self.senders:
            task.cancel()
        await asyncio.gather(*self.senders, return_exceptions=True)

    def workers(self) -> None:
        """The VAD and engine threads' work, done now (their threads are not started)."""
        self.state.voice.run_pending()
        self.state.engine.step()

    async def run(self, seconds: float) -> None:
        await self.clock.run(seconds, self.workers)

    async def ended(self) -> None:
        """Wait (real time: closing the peer connection is real I/O) until the session has ended."""
        await asyncio.wait_for(self.session.ended.wait(), OPEN_WAIT_S)
        self.workers()

    async def close(self) -> None:
        await self.stop_senders()
        if self._events is not None:
            self._events.cancel()
            await asyncio.gather(self._events, return_exceptions=True)

    async def _send_video(self) -> None:
        with contextlib.suppress(MediaStreamError):  # the track ends with the session
            while True:
                frame = await self.session.video.recv()
                self.sent.video.append((self.clock.now, frame.pts, frame.to_ndarray(format="rgb24")))

    async def _send_audio(self) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await self.session.audio.recv()
                self.sent.audio.append((self.clock.now, frame.pts, frame.to_ndarray().reshape(-1)))

    async def _read_events(self, queue: asyncio.Queue[Event | None]) -> None:
        while (event := await queue.get()) is not None:
            if event["type"] == "state":
                self.sent.states.append((self.clock.now, str(event["state"])))


@contextlib.asynccontextmanager
async def virtual_session(fps: int = 25, size: int = 128, connect: bool = True, sessions: dict[str, float] | None = None,
                          media: dict[str, float] | None = None) -> AsyncIterator[VirtualSession]:
    """The fake generator's server state on a virtual clock, and one session in it. The peer watch stays on real
    time (it reads a real peer's RTCP reports): a long timeout keeps it out of the way."""
    settings = load_settings(TEST_CONFIG, environ={}, sessions={"peer_timeout_s": 3600, **(sessions or {})},
                             media=media)
    clock = VirtualClock()
    state = build_state(settings, fake_pipeline(), clock)
    avatar = await state.avatars.add(settings.path(settings.default_avatar).read_bytes(), "default",
                                     avatar_id=DEFAULT_AVATAR_ID, builtin=True)
    session, _ = await state.manager.create(await offer_sdp(), SessionOptions("default", fps, size, size), avatar)
    live = VirtualSession(state, clock, session)
    try:
        waited = 0.0
        while session.slot.stream is None and waited < OPEN_WAIT_S:  # opened on the engine's side thread
            await asyncio.sleep(0.01)
            waited += 0.01
        assert session.slot.stream is not None, "the engine did not open the stream"
        if connect:
            live.connect()
        yield live
    finally:
        await live.close()
        await state.manager.close_all("shutdown")
        state.voice.run_pending()
        state.engine.stop()
        state.voice.stop()


def loud(pcm: np.ndarray, threshold: float) -> bool:
    return float(np.sqrt(np.mean((pcm.astype(np.float64) / 32768) ** 2))) > threshold


@pytest.mark.parametrize("fps, size", [(25, 128), (15, 192)])
async def test_video_paced_at_the_requested_fps_and_lips_in_sync_with_the_audio(fps: int, size: int) -> None:
    async with virtual_session(fps, size) as live:
        live.session.put_audio(tone_bursts(6.0))   # as the microphone or the audio socket would
        await live.run(5.0)
        stats = live.session.stats()
        counters = live.session.counters
    video, audio = live.sent.video, live.sent.audio

    sent_at = np.array([t for t, _, _ in video])
    assert len(video) == 5 * fps + 1 and np.allclose(np.diff(sent_at), 1 / fps)   # one frame every 1/fps, no burst
    assert set(np.diff([pts for _, pts, _ in video])) == {VIDEO_CLOCK_RATE // fps}
    assert counters.video_reanchors == 0 and counters.frames_held == 0
    assert np.allclose(np.diff([t for t, _, _ in audio]), AUDIO_PTIME_S)           # a packet every 20 ms
    assert {img.shape for _, _, img in video} == {(size, size, 3)}

    times = [read_barcode(img) for _, _, img in video[-50:]]
    assert np.all(np.diff(times) >= 0), "frames leave in audio-time order"
    mouths = [read_mouth(img) for _, _, img in video]
    assert max(mouths) > 0.5 and min(mouths) < 0.1

    lips = [(t, read_mouth(img) > 0.5) for t, _, img in video]
    voice = [(t, loud(pcm, 0.1)) for t, _, pcm in audio]
    lag, agreement = best_lag(*envelopes(lips, voice, start=sent_at[0] + 1.0))
    assert agreement > 0.9, f"mouth does not follow the audio (agreement {agreement:.2f})"
    assert abs(lag) <= 1 / fps, f"lips and voice leave {lag * 1000:.0f} ms apart"

    assert stats["latency_ms_p50"] is not None
    assert abs(stats["fps"] - fps) <= 1 / live.state.settings.sessions.stats_interval_s  # one frame per interval
    assert {"queue", "sample", "decode"} <= set(stats["stages"]), stats["stages"]


async def test_a_stalled_sender_makes_the_video_reanchor_instead_of_bursting() -> None:
    async with virtual_session() as live:
        await live.run(1.0)
        await live.stop_senders()               # the sender stalls (a busy loop, a slow encoder) for 300 ms
        await live.run(0.3)
        resumed = live.clock.now
        live.start_senders()
        await live.run(1.0)
        reanchors = live.session.counters.video_reanchors
    after = [t for t, _, _ in live.sent.video if t >= resumed]
    assert after[0] == pytest.approx(resumed) and np.allclose(np.diff(after), 1 / 25)  # no burst to catch up
    assert reanchors == 1


async def test_the_playout_delay_comes_down_to_what_the_pipeline_needs_not_what_its_own_queue_holds() -> None:
    """Started at the latency budget, the engine holds chunks back (the session's frames are full): that wait is
    not the pipeline's, and the delay comes down to the silence chunks' needed delay plus the margin."""
    async with virtual_session(media={"initial_latency_ms": 800}) as live:
        media, model = live.state.settings.media, live.state.handle.pipe.config
        await live.run(1.0)
        assert live.session.playout.delay > 0.6 and max(live.session.slot.stage_summary()["queue"].values()) > 0
        await live.run(5.0)
        playout = live.session.playout
    # a chunk's audio (its frames and the look-ahead) is complete one feed tick after silence is fed for it, which
    # is the input jitter allowance behind real time; the fake generator takes no time
    needed = (model.chunk_frames + model.lookahead_frames) / model.fps + (media.input_jitter_ms
                                                                          + media.feed_interval_ms) / 1000
    assert playout.delay == pytest.approx(needed + media.latency_margin_ms / 1000)
    assert playout.target(live.clock.now) == pytest.approx(playout.delay)


@pytest.mark.parametrize("speech_decay_ms_per_s", [50.0, 0.0])
async def test_during_continuous_speech_the_delay_comes_down_without_a_jump_in_voice_or_video(
        speech_decay_ms_per_s: float) -> None:
    """Started at the latency budget (as after a slow spell), the avatar speaking all along: the delay comes down at
    the speech rate (0: the rule before 2026-11-28, only in silence), the audio plays slightly faster instead of
    jumping (no resync), the video skips one frame per frame time the delay came down, lips and voice stay in sync."""
    seconds = 7.0
    async with virtual_session(media={"initial_latency_ms": 800,
                                      "latency_speech_decay_ms_per_s": speech_decay_ms_per_s}) as live:
        live.session.put_audio(tone_bursts(seconds + 1.0))        # its pauses are shorter than the delay
        await live.run(seconds)
        playout, counters, dropped = live.session.playout, live.session.counters, live.session.frames.dropped
        speaking = [s for t, s in live.sent.states]
    video, audio = live.sent.video, live.sent.audio
    came_down = 0.8 - playout.delay
    if speech_decay_ms_per_s == 0:
        assert came_down < 0.03                                    # only in the silence before the first burst
        return
    assert "speaking" in speaking
    assert came_down == pytest.approx(seconds * speech_decay_ms_per_s / 1000, abs=0.05)
    assert playout.delay > playout.target(live.clock.now)          # still above it: it came down while speaking
    assert counters.audio_resyncs == 0, "the audio jumped"
    assert dropped <= came_down * 25 + 1 and counters.frames_held == 0
    assert np.allclose(np.diff([t for t, _, _ in video]), 1 / 25)  # still one frame every 1/25 s
    lips = [(t, read_mouth(img) > 0.5) for t, _, img in video]
    voice = [(t, loud(pcm, 0.1)) for t, _, pcm in audio]
    lag, agreement = best_lag(*envelopes(lips, voice, start=live.clock.now - 4.0))
    assert agreement > 0.9 and abs(lag) <= 1 / 25, (lag, agreement)


@pytest.mark.parametrize("reorder", [3, None])
async def test_the_microphones_receiver_gets_the_configured_live_audio_buffer(reorder: int | None) -> None:
    async with virtual_session(media={"mic_reorder_packets": reorder}) as live:  # type: ignore[dict-item]
        receivers = [t.receiver for t in live.session.pc.getTransceivers() if t.kind == "audio"]
        buffers = [getattr(r, RECEIVER_JITTER_BUFFER) for r in receivers]
        packets = live.session.stats()["input_packets"]
    assert len(buffers) == 1
    if reorder is None:                                           # aiortc's own: each packet waits for 4 more
        assert type(buffers[0]) is JitterBuffer and (buffers[0].capacity, buffers[0]._prefetch) == AIORTC_AUDIO_BUFFER
        assert packets == {}
    else:
        assert isinstance(buffers[0], LiveAudioJitterBuffer) and buffers[0].reorder == reorder
        assert live.session.mic_buffer is buffers[0] and packets == {"skipped": 0, "late": 0}


def assert_quiet(sent: Sent, start: float, end: float) -> None:
    """Between a barge-in at `start` and `end`: at most one chunk of open mouth, no speech after one chunk."""
    chunk_s = CHUNK_FRAMES / 25
    mouths = [read_mouth(img) for t, _, img in sent.video if start < t < end]
    assert len(mouths) > 25
    assert sum(mouth > 0.5 for mouth in mouths) <= CHUNK_FRAMES, "open-mouth frames after the barge-in"
    speech = [t for t, _, pcm in sent.audio if start + chunk_s < t < end and loud(pcm, 0.05)]
    assert not speech, f"speech still audible after the barge-in: {speech[:3]}"


async def test_barge_in_stops_speech_within_one_chunk_and_the_next_speech_shows() -> None:
    tone = (0.5 * np.sin(2 * np.pi * 300 * np.arange(16000 * 6) / 16000)).astype(np.float32)
    async with virtual_session() as live:
        live.session.put_audio(tone)
        for _ in range(50):
            await live.run(0.1)
            if any(read_mouth(img) > 0.5 for _, _, img in live.sent.video[-5:]):
                break
        await live.run(0.5)                                       # well into speech
        barge_ins = []
        for _ in range(2):                                        # twice: the barge-in epochs stay in step
            barge_ins.append(live.clock.now)
            live.session.interrupt()
            await live.run(1.5)
            live.session.put_audio(tone[:2 * 16000])              # the next utterance
            await live.run(1.2)
        sent = live.sent

    assert_quiet(sent, barge_ins[0], barge_ins[0] + 1.5)
    assert_quiet(sent, barge_ins[1], barge_ins[1] + 1.5)
    for start in barge_ins:                                       # the next speech is shown (same epoch again)
        assert any(read_mouth(img) > 0.5 for t, _, img in sent.video if start + 1.5 < t < start + 2.7)
    assert "speaking" in [s for t, s in sent.states if t < barge_ins[0]]
    assert [s for t, s in sent.states if barge_ins[0] < t < barge_ins[0] + 1.5][-1] in ("silent", "idle")


async def test_a_session_that_never_connects_ends_at_its_connect_timeout() -> None:
    async with virtual_session(connect=False) as live:
        await live.run(live.state.settings.sessions.connect_timeout_s - 0.1)
        assert not live.session.closed
        await live.run(0.2)
        await live.ended()
        assert live.session.close_reason == "connect_timeout" and not live.state.manager.sessions


async def test_a_session_ends_at_its_maximum_duration_and_frees_everything() -> None:
    async with virtual_session(sessions={"max_duration_s": 3.0}) as live:
        errors = live.session.attach()
        await live.run(2.9)
        assert not live.session.closed and len(live.sent.video) > 2.5 * 25
        await live.run(0.2)
        await live.ended()
        state, session = live.state, live.session
        assert session.close_reason == "duration_limit"
        assert not state.manager.sessions and not state.engine.slot_count and not state.handle.pipe.open_streams
        assert not state.voice.active and not session.tasks
        events = []
        while not errors.empty():
            events.append(errors.get_nowait())
        assert {"type": "error", "code": "duration_limit",
                "detail": "session reached its maximum duration"} in events and events[-1] is None
        metrics = generate_latest(state.metrics.registry).decode()
        assert 'omnilive_sessions_ended_total{reason="duration_limit"} 1.0' in metrics


def scrape(state: ServerState) -> dict[str, float]:
    """What GET /metrics returns, as {sample name: value} for the server's unlabelled samples."""
    text = state.metrics.render(state.engine, state.manager.max_sessions, state.handle.device).decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name.startswith("omnilive_") and not sample.labels}


async def test_metrics_count_frames_as_they_are_sent_and_a_scrape_resets_nothing() -> None:
    async with virtual_session() as live:
        live.session.put_audio(tone_bursts(4.0))
        await live.run(1.0)
        first, second = scrape(live.state), scrape(live.state)
        assert first == second, "two scrapes in a row (two scrapers) see the same values"
        assert first["omnilive_frames_sent_total"] == len(live.sent.video) == 26
        await live.run(2.0)
        third = scrape(live.state)
        assert third["omnilive_frames_sent_total"] == len(live.sent.video) == 76
        generated, shown = "omnilive_frames_generated_total", "omnilive_frames_generated_sent_total"
        assert third[generated] - first[generated] >= 2 * 25 - CHUNK_FRAMES
        assert third[shown] - first[shown] >= 2 * 25 - CHUNK_FRAMES
        assert "omnilive_generated_fps" not in third and third["omnilive_sessions_active"] == 1
        await live.session.close("deleted")
        await live.ended()
        ended = scrape(live.state)
        assert ended["omnilive_sessions_active"] == 0
    counters = [name for name in first if name.endswith(("_total", "_count", "_sum"))]
    assert {"omnilive_frames_held_total", "omnilive_engine_degraded_chunks_total",
            "omnilive_generate_seconds_count", "omnilive_latency_seconds_count"} <= set(counters)
    for name in counters:
        assert first[name] <= third[name] <= ended[name], f"{name} went down"
    assert ended["omnilive_frames_sent_total"] == len(live.sent.video)
