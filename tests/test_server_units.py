"""Server building blocks without a network: frame queue, buffers, engine planning, VAD, auth."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from avatar_server.audio import AudioHistory, Inbox, PCM16Decoder
from avatar_server.auth import Authenticator
from avatar_server.engine import Engine
from avatar_server.feed import AudioFeed
from avatar_server.playout import FrameQueue
from avatar_server.settings import AuthSettings, EngineSettings, MediaSettings, ServerSettings, VADSettings
from avatar_server.slot import ClearAudio, GeneratedChunk, PushAudio, Slot, SlotCallbacks
from avatar_server.testing import FakePipeline, FakeStreamOptions
from avatar_server.vad import VoiceWorker
from avatar_server.warmup import WarmUp
from model.errors import InputError

SPEECH = Path("/usr/share/sounds/alsa/Front_Center.wav")


def test_frame_queue_shows_the_frame_due_and_counts_skipped_ones() -> None:
    queue = FrameQueue(frame_s=0.04)
    frames = np.zeros((4, 2, 2, 3), np.uint8)
    queue.extend(np.array([0.0, 0.04, 0.08, 0.12]), frames)
    assert queue.take(-0.05) is None
    assert queue.take(0.09).audio_time == pytest.approx(0.08)
    assert queue.dropped == 2 and len(queue) == 1


def test_audio_history_reads_back_stamps_arrivals_and_silences() -> None:
    history = AudioHistory(rate=100, seconds=1.0, block=10)
    history.write(np.ones(25, np.float32), arrival=5.0)
    history.write(np.full(30, 2.0, np.float32), arrival=6.0)
    assert history.read(20, 10).tolist() == [1.0] * 5 + [2.0] * 5
    assert history.arrival(12) == 5.0 and history.arrival(31) == 6.0 and history.arrival(99) is None
    history.silence_from(40)
    assert history.read(35, 10).tolist() == [2.0] * 5 + [0.0] * 5
    history.write(np.full(100, 3.0, np.float32), arrival=7.0)   # wraps: the oldest audio is gone
    assert history.read(0, 5).tolist() == [0.0] * 5 and history.read(150, 5).tolist() == [3.0] * 5


def test_inbox_limit_and_pcm16_decoding() -> None:
    inbox = Inbox(max_samples=10)
    assert inbox.put(np.ones(6, np.float32)) and not inbox.put(np.ones(6, np.float32))
    assert inbox.take(4).size == 4 and inbox.size == 2
    with pytest.raises(InputError):
        PCM16Decoder(16000, 16000).decode(b"\x00\x01\x02")
    same = PCM16Decoder(16000, 16000).decode(np.array([16384, -32768], "<i2").tobytes())
    assert same.tolist() == [0.5, -1.0]
    decoder = PCM16Decoder(48000, 16000)
    out = sum(decoder.decode(np.zeros(4800, "<i2").tobytes()).size for _ in range(10))
    assert abs(out - 16000) < 200


def test_session_tokens_expire_and_cannot_be_forged() -> None:
    auth = Authenticator(AuthSettings(api_keys=("key",), token_ttl_s=60, token_secret="s"))
    token, ttl = auth.issue(now=1000.0)
    assert ttl == 60 and auth.is_token(token, now=1030.0)
    assert not auth.is_token(token, now=1061.0)
    assert not auth.is_token(token[:-2] + "xx", now=1030.0)
    assert not Authenticator(AuthSettings(api_keys=("key",), token_secret="other")).is_token(token, now=1030.0)
    assert auth.is_key("key") and not auth.is_key(token)


#################################################################################
#                                    Engine                                     #
#################################################################################


class Collector:
    """SlotCallbacks that record what the engine reports."""

    def __init__(self, deadline_offset: float = 10.0) -> None:
        self.chunks: list[GeneratedChunk] = []
        self.skipped = 0
        self.errors: list[str] = []
        self.deadline_offset = deadline_offset
        self.got = threading.Event()

    def callbacks(self) -> SlotCallbacks:
        def on_chunk(chunk: GeneratedChunk) -> None:
            self.chunks.append(chunk)
            self.got.set()

        return SlotCallbacks(on_chunk=on_chunk, on_skip=lambda n: setattr(self, "skipped", self.skipped + n),
                             deadline=lambda t: time.monotonic() + self.deadline_offset,
                             frames_buffered=lambda: 0, on_error=lambda d, fatal: self.errors.append(d))


def make_slot(pipe: FakePipeline, collector: Collector, name: str = "s") -> Slot:
    reference = pipe.encode_reference(np.zeros((64, 64, 3), np.uint8))
    return Slot(session_id=name, reference=reference, options=FakeStreamOptions(), callbacks=collector.callbacks())


def test_engine_batches_sessions_and_keeps_session_time_across_clear() -> None:
    pipe = FakePipeline()
    engine = Engine(pipe, EngineSettings())
    collectors = [Collector(), Collector()]
    slots = [make_slot(pipe, c, f"s{i}") for i, c in enumerate(collectors)]
    for slot in slots:
        engine.add(slot)
        engine.submit(slot, PushAudio(np.zeros(3200, np.float32), False))  # 5 frames: one chunk + look-ahead
    deadline = time.monotonic() + 5
    while any(slot.stream is None for slot in slots) and time.monotonic() < deadline:  # opened on a side thread
        time.sleep(0.01)
    engine.start()
    try:
        assert all(c.got.wait(5) for c in collectors)
        assert (2, 2) in pipe.calls                               # one generate call for both sessions
        first = collectors[0]
        first.got.clear()
        engine.submit(slots[0], ClearAudio(epoch=1))              # drops the 1 pending frame of audio
        engine.submit(slots[0], PushAudio(np.zeros(3200, np.float32), False))
        assert first.got.wait(5)
        times = first.chunks[-1].times
        assert times[0] == pytest.approx(0.2)                     # session time: 3200 samples already pushed
        assert first.chunks[-1].epoch == 1                        # generated after the clear: its epoch
        for slot in slots:
            engine.remove(slot)
        for slot in slots:
            assert slot.released.wait(5)
        assert engine.slot_count == 0 and pipe.open_streams == 0
    finally:
        engine.stop()


def test_engine_warms_up_every_batch_size_it_admits_before_serving() -> None:
    pipe = FakePipeline()
    engine = Engine(pipe, EngineSettings(max_batch=2))
    reference = pipe.encode_reference(np.zeros((64, 64, 3), np.uint8))
    engine.start(warm_up=WarmUp(reference, FakeStreamOptions(), sessions=3))
    try:
        assert engine.warmed.wait(5)
        assert pipe.calls == [(1, 2), (2, 2)]                     # up to max_batch, at the default steps
        assert pipe.open_streams == 0 and engine.stats.batches == 0 and engine.running
    finally:
        engine.stop()


def test_engine_never_steps_below_what_the_checkpoint_validated() -> None:
    """pipeline.json's sampler.min_steps is a floor for the engine, whatever engine.min_steps says."""
    from dataclasses import replace

    pipe = FakePipeline()
    pipe.config = replace(pipe.config, steps=4)
    object.__setattr__(pipe.config, "min_steps", 3)  # a checkpoint validated down to 3 steps
    engine = Engine(pipe, EngineSettings(min_steps=1, deadline_margin_ms=0), steps=4)
    assert engine.min_steps == 3
    engine.cost.update(batch=1, steps=4, sample_s=1.2, decode_s=0.0)  # far slower than real time at every step count
    late = Collector(-0.5)
    slot = make_slot(pipe, late, "late")
    slot.stream = pipe.open_stream(slot.reference)
    slot.next_time = 0.0
    assert engine._plan([slot]) in (([], 4), ([slot], 3))  # frames held, or 3 steps: never 1 or 2
    assert engine._plan([slot])[1] >= 3


def test_engine_uses_fewer_steps_then_holds_frames_when_late() -> None:
    pipe = FakePipeline()
    engine = Engine(pipe, EngineSettings(min_steps=1, deadline_margin_ms=0), steps=4)
    engine.cost.update(batch=1, steps=4, sample_s=0.12, decode_s=0.0)  # 30 ms per step: 4 steps keep up (160 ms chunks)
    on_time, tight, late = Collector(1.0), Collector(0.07), Collector(-0.5)
    slots = [make_slot(pipe, c, n) for c, n in ((on_time, "a"), (tight, "b"), (late, "c"))]
    for slot in slots:
        slot.stream = pipe.open_stream(slot.reference)
        slot.next_time = 0.0
    assert engine._plan([slots[0]]) == ([slots[0]], 4)
    assert engine._plan([slots[1]]) == ([slots[1]], 2)            # 2 steps fit in 70 ms
    assert engine._plan([slots[2]]) == ([], 4)                    # hopeless: backlog dropped, frames held
    assert late.skipped > 0 and slots[2].fresh
    assert engine._plan([slots[2]]) == ([slots[2]], 1)            # the fresh chunk runs, as fast as it can
    engine.cost.update(batch=1, steps=4, sample_s=1.2, decode_s=0.0)   # now slower than real time at 4 and 2 steps
    assert engine._plan([slots[0]])[1] == 1                       # fewer steps before the backlog grows


def test_vad_worker_gates_speech_and_keeps_push_clear_order() -> None:
    assert SPEECH.is_file(), "alsa-utils speech sample not installed (scripts/setup.sh installs alsa-utils)"
    from model.media import load_audio

    speech = load_audio(SPEECH, 16000)
    quiet = np.random.default_rng(0).normal(0, 1e-3, 16000).astype(np.float32)
    forwarded: list[PushAudio | ClearAudio] = []
    changes: list[bool] = []
    worker = VoiceWorker(VADSettings())
    worker.start()
    try:
        worker.add("s", forwarded.append, changes.append)
        for block in np.array_split(speech, speech.size // 320):
            worker.push("s", block, True)
        worker.clear("s", epoch=1)
        for block in np.array_split(quiet, 50):
            worker.push("s", block, True)
        worker.release("s")
        deadline = time.monotonic() + 20
        while worker.active and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    clears = [i for i, c in enumerate(forwarded) if isinstance(c, ClearAudio)]
    assert clears == [speech.size // 320] and forwarded[clears[0]] == ClearAudio(epoch=1)
    split = clears[0]
    pushes = [c for c in forwarded if isinstance(c, PushAudio)]
    assert any(c.voiced for c in pushes[:split])                       # speech is voiced
    assert not any(c.voiced for c in pushes[split:])                   # noise after the barge-in is not
    assert changes[0] is True and changes[-1] is False and worker.active == 0


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_server_decodes_at_the_configured_precision(tmp_path: Path, precision: str) -> None:
    from avatar_server.runtime import load_pipeline
    from avatar_server.settings import load_settings
    from pipeline_helpers import write_micro_yaml

    config = write_micro_yaml(tmp_path / "micro.yaml")
    settings = load_settings("configs/server/test.yaml", environ={},
                             model={"weights": None, "config": str(config), "decode_precision": precision})
    assert load_pipeline(settings).pipe.vae.decode_bfloat16 == (precision == "bfloat16")


#################################################################################
#                                  Audio feed                                   #
#################################################################################


class _Recorder:
    """Stands in for the VAD worker: what the feed pushed, as (samples, input or silence)."""

    def __init__(self) -> None:
        self.pushed: list[tuple[int, bool]] = []

    def push(self, session_id: str, pcm: np.ndarray, detect: bool) -> None:
        self.pushed.append((pcm.size, detect))


def _feed(**media: object) -> tuple[AudioFeed, _Recorder]:
    voice = _Recorder()
    settings = ServerSettings(media=MediaSettings(**media))  # type: ignore[arg-type]
    return AudioFeed(settings, voice, "s", 16000), voice  # type: ignore[arg-type]


def _microphone(feed: AudioFeed, seconds: float, start: float, gap: tuple[float, float] | None = None,
                loud: bool = False) -> None:
    """A microphone's 20 ms parts arriving in real time (none during `gap`, which then arrives at once at its end),
    with the feed ticking every 20 ms."""
    part = np.full(320, 0.1 if loud else 0.0, np.float32)
    held = 0
    for i in range(int(seconds / 0.02)):
        t = start + i * 0.02
        if gap is not None and gap[0] <= t < gap[1]:
            held += 1
        else:
            for _ in range(held + 1):
                feed.put(part, t, live=True)
            held = 0
        feed.tick(t + 0.02, t + 0.02)


def test_a_microphone_is_fed_as_it_arrives_and_catches_up_in_quiet_after_a_gap() -> None:
    feed, _ = _feed()
    _microphone(feed, 2.0, 0.0)
    ahead = feed.history.end - 2.0 * 16000
    assert -0.1 * 16000 <= ahead <= 0  # never ahead of the wall clock, at most the jitter allowance behind
    dropped = feed.dropped
    _microphone(feed, 3.0, 2.0, gap=(2.5, 2.8), loud=True)  # speech: a 300 ms gap is not dropped
    assert feed.dropped == dropped and feed.history.end + feed.inbox.size - 5.0 * 16000 > 0.1 * 16000
    _microphone(feed, 1.0, 5.0)  # the next pause: quiet parts go until it is at most 60 ms behind the allowance
    assert feed.dropped - dropped >= 0.15 * 16000
    assert feed.history.end + feed.inbox.size - (6.0 - 0.1) * 16000 <= 0.06 * 16000 + 320
    assert max(feed.waits) > 0.2 and feed.waits[-1] < 0.1


def test_pushed_audio_is_fed_ahead_and_never_dropped() -> None:
    feed, voice = _feed()
    feed.put(np.zeros(3 * 16000, np.float32), 0.0)  # an agent's 3 s, at once
    for i in range(50):
        feed.tick((i + 1) * 0.02, (i + 1) * 0.02)
    assert feed.dropped == 0 and feed.history.end == int((1.0 + 0.2) * 16000)  # the lead allowance ahead
    old, _ = _feed(live_input_max_lag_ms=None)  # the previous rule for a microphone: fed like pushed audio
    _microphone(old, 2.0, 0.0, gap=(0.5, 0.8))
    assert old.dropped == 0 and old.history.end + old.inbox.size - 2.0 * 16000 > 0.1 * 16000
