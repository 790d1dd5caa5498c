"""The playout delay on virtual time: it follows the p95 of what chunks needed plus the margin, rises at once for a
late chunk, comes back down once slow chunks leave the window (faster in silence, slower but also while the avatar
speaks), stays within its limits, and never counts the time the engine held a chunk back because the session's
frames were queued already."""

from __future__ import annotations

import time

import numpy as np
import pytest

from avatar_server.engine import Engine
from avatar_server.playout import PlayoutClock
from avatar_server.settings import EngineSettings, MediaSettings
from avatar_server.slot import GeneratedChunk, PushAudio, Slot, SlotCallbacks
from avatar_server.testing import FakePipeline, FakeStreamOptions

CHUNK_S = 0.08        # a chunk every 80 ms (2 frames at 25 fps)
MARGIN_S = 0.04
DECAY_PER_S = 0.1
SPEECH_DECAY_PER_S = 0.02
TICK_S = 0.02         # the session settles its playout delay every feed tick
WINDOW_S = 10.0
OPEN_WAIT_S = 5.0     # real seconds for the engine's side thread to open a stream


def media(**overrides: float) -> MediaSettings:
    values = dict(initial_latency_ms=300, min_latency_ms=80, max_latency_ms=800, latency_margin_ms=MARGIN_S * 1000,
                  latency_decay_ms_per_s=DECAY_PER_S * 1000, latency_speech_decay_ms_per_s=SPEECH_DECAY_PER_S * 1000,
                  latency_target_window_s=WINDOW_S,
                  latency_target_percentile=95)
    return MediaSettings(**{**values, **overrides})


class Stream:
    """Chunks arriving on virtual time, each needing a given playout delay; the delay settled after each."""

    def __init__(self, playout: PlayoutClock) -> None:
        self.playout = playout
        self.now = playout.origin
        self.arrivals: list[float] = []
        self.delays: list[float] = []  # the playout delay after each chunk

    def chunk(self, needed: float, held: float = 0.0, speaking: bool = False) -> None:
        """The next chunk, CHUNK_S after the last, ready `needed` after its audio time (`held` of that held back);
        the delay settled every feed tick in between."""
        for _ in range(int(round(CHUNK_S / TICK_S))):
            self.now += TICK_S
            self.playout.settle(self.now, speaking)
        self.playout.chunk_arrived(self.now - self.playout.origin - needed, self.now, held)
        self.arrivals.append(self.now)
        self.delays.append(self.playout.delay)

    def chunks(self, needed: np.ndarray, speaking: bool = False) -> None:
        for value in needed:
            self.chunk(float(value), speaking=speaking)

    def steady(self, seconds: float, needed: float, speaking: bool = False) -> None:
        self.chunks(np.full(int(round(seconds / CHUNK_S)), needed), speaking)

    def held_back(self, seconds: float, pipeline: float, room: float, count_held: bool = True) -> None:
        """Chunks the pipeline makes in `pipeline` seconds, each held back by the engine until its first frame plays
        within `room` (its session's frames are full until then): the larger the delay, the longer the hold."""
        for _ in range(int(round(seconds / CHUNK_S))):
            needed = max(pipeline, self.playout.delay - room)
            self.chunk(needed, held=needed - pipeline if count_held else 0.0)


def test_the_delay_converges_to_the_p95_of_what_chunks_needed_plus_the_margin() -> None:
    rng = np.random.default_rng(0)
    needed = rng.uniform(0.10, 0.20, int(30 / CHUNK_S))
    stream = Stream(PlayoutClock(media(), origin=0.0))
    stream.chunks(needed)
    in_window = needed[np.array(stream.arrivals) >= stream.now - WINDOW_S]
    target = float(np.percentile(in_window, 95)) + MARGIN_S
    assert stream.playout.target(stream.now) == pytest.approx(target)
    # the 5 % above the p95 raise it at once, by less than the spread above the p95 (5 ms here)
    assert stream.playout.delay == pytest.approx(target, abs=needed.max() - np.percentile(in_window, 95))
    assert max(stream.delays[-int(WINDOW_S / CHUNK_S):]) <= needed.max() + MARGIN_S + 1e-9


def test_a_burst_of_slow_chunks_raises_the_delay_at_once_and_it_comes_back_after_the_burst_leaves_the_window() -> None:
    stream = Stream(PlayoutClock(media(), origin=0.0))
    stream.steady(20.0, 0.15)
    assert stream.playout.delay == pytest.approx(0.19)
    stream.chunk(0.45)                                               # one slow chunk: no frozen video
    assert stream.playout.delay == pytest.approx(0.49)
    stream.chunks(np.full(15, 0.45))                                 # a burst: more than 5 % of the window
    bursts = len(stream.delays)
    stream.steady(WINDOW_S - 2.0, 0.15)                              # most of the burst is still in the window
    assert stream.playout.delay == pytest.approx(0.49)
    stream.steady(2.0 + (0.49 - 0.19) / DECAY_PER_S, 0.15)           # it left; the delay comes down at 100 ms/s
    assert stream.playout.target(stream.now) == pytest.approx(0.19)
    assert stream.playout.delay == pytest.approx(0.19)
    steps = np.diff(stream.delays[bursts - 1:])
    assert np.all(steps <= 0) and np.all(steps >= -DECAY_PER_S * CHUNK_S - 1e-9), "at most 100 ms/s, never up"


def test_the_delay_stays_within_its_limits() -> None:
    stream = Stream(PlayoutClock(media(), origin=0.0))
    stream.steady(5.0, 2.0)                                          # far too slow: capped by the budget
    assert max(stream.delays) == pytest.approx(0.8)
    stream.steady(WINDOW_S + 10.0, 0.0)                              # instant: floored at min_latency
    assert min(stream.delays) == pytest.approx(0.08) and stream.playout.delay == pytest.approx(0.08)


def test_the_delay_comes_down_slower_while_the_avatar_speaks_and_not_at_all_when_told_so() -> None:
    stream = Stream(PlayoutClock(media(), origin=0.0))
    stream.steady(5.0, 0.1, speaking=True)                           # speaking: 20 ms/s from the first chunk on
    speaking = 0.3 - (stream.now - CHUNK_S) * SPEECH_DECAY_PER_S
    assert stream.playout.delay == pytest.approx(speaking)
    stream.steady(0.4, 0.1)
    assert stream.playout.delay == pytest.approx(speaking - 0.04)    # 0.4 s of silence: 40 ms
    before = Stream(PlayoutClock(media(latency_speech_decay_ms_per_s=0), origin=0.0))
    before.steady(5.0, 0.1, speaking=True)                           # the rule before 2026-11-28: silence only
    assert before.playout.delay == pytest.approx(0.3)


def test_after_a_slow_spell_the_delay_returns_to_the_p95_plus_margin_during_continuous_speech() -> None:
    """The engine was slow (the delay went to its cap), then fast again while the avatar never stops speaking: the
    delay comes back to the p95 of what chunks need plus the margin, in steps of at most the speech rate per tick
    (so the tracks follow without a jump: tests/test_server_pacing.py), never up."""
    stream = Stream(PlayoutClock(media(), origin=0.0))
    stream.steady(5.0, 0.15, speaking=True)
    stream.steady(3.0, 1.5, speaking=True)                           # the slow spell: at the 800 ms cap
    assert stream.playout.delay == pytest.approx(0.8)
    slow_end = len(stream.delays)
    stream.steady(WINDOW_S - 3.0, 0.15, speaking=True)               # fast again; the slow chunks still in the window
    assert stream.playout.delay == pytest.approx(0.8)
    stream.steady(3.0, 0.15, speaking=True)                          # ... and leaving it
    left = len(stream.delays)
    down_s = (0.8 - 0.19) / SPEECH_DECAY_PER_S                       # 30.5 s at 20 ms/s
    stream.steady(down_s + 1.0, 0.15, speaking=True)
    assert stream.playout.target(stream.now) == pytest.approx(0.19)
    assert stream.playout.delay == pytest.approx(0.19)
    steps = np.diff(stream.delays[slow_end - 1:])
    assert np.all(steps <= 1e-12) and np.all(steps >= -SPEECH_DECAY_PER_S * CHUNK_S - 1e-9)
    delays = np.array(stream.delays)
    start = slow_end + int(np.argmax(delays[slow_end:] < 0.8 - 1e-9))  # once the slow chunks are under 5 % of it
    end = start + int(np.argmax(delays[start:] <= 0.19 + 1e-9))
    assert start <= left and (end - start) * CHUNK_S == pytest.approx(down_s, abs=2 * CHUNK_S)


def test_time_the_engine_held_a_chunk_back_for_room_is_not_counted() -> None:
    """A large delay makes the engine hold chunks back (their session's frames are full): counted as the pipeline's
    time, that wait would keep the delay large."""
    seconds = 6.0
    honest = Stream(PlayoutClock(media(initial_latency_ms=600), origin=0.0))
    honest.held_back(seconds, pipeline=0.12, room=0.16)
    assert honest.playout.delay == pytest.approx(0.12 + MARGIN_S)   # down from 600 ms at 100 ms/s, then there
    padded = Stream(PlayoutClock(media(initial_latency_ms=600), origin=0.0))
    padded.held_back(seconds, pipeline=0.12, room=0.16, count_held=False)
    assert padded.playout.delay > 0.4


def test_the_engine_reports_how_long_it_held_a_chunk_back_for_room_in_the_sessions_frames() -> None:
    pipe = FakePipeline()
    now = [100.0]
    room = EngineSettings().max_chunks_ahead * pipe.config.chunk_frames
    buffered = [room]                                                # the session's frames are full
    chunks: list[GeneratedChunk] = []
    callbacks = SlotCallbacks(on_chunk=chunks.append, on_skip=lambda frames: None,
                              deadline=lambda audio_time: now[0] + 1.0, frames_buffered=lambda: buffered[0],
                              on_error=lambda detail, fatal: None)
    slot = Slot(session_id="s", reference=pipe.encode_reference(np.zeros((8, 8, 3), np.uint8)),
                options=FakeStreamOptions(), callbacks=callbacks)
    engine = Engine(pipe, EngineSettings(), clock=lambda: now[0])
    engine.add(slot)
    waited = 0.0
    while slot.stream is None and waited < OPEN_WAIT_S:             # opened on the engine's side thread
        time.sleep(0.01)
        waited += 0.01
    try:
        frames = pipe.config.chunk_frames + pipe.config.lookahead_frames
        engine.submit(slot, PushAudio(np.zeros(frames * pipe.samples_per_frame, np.float32), False))  # at 100.0
        for now[0] in (100.2, 100.5):
            assert not engine.step() and not chunks                  # ready, but held back
        buffered[0] = 0
        now[0] = 100.52
        assert engine.step()
        assert len(chunks) == 1 and chunks[0].held == pytest.approx(0.5)
        engine.submit(slot, PushAudio(np.zeros(pipe.config.chunk_frames * pipe.samples_per_frame, np.float32),
                                      False))                        # the next chunk: complete at 100.52
        now[0] = 100.6
        assert engine.step() and chunks[1].held == 0.0               # never held back
    finally:
        engine.stop()
