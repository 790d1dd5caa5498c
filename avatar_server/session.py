"""One live avatar session: its peer connection, audio feed, engine slot, tracks and events.

However a session ends (DELETE, peer failed/closed, peer silent for `peer_timeout_s`, events socket
gone while the peer is silent too, duration limit, an internal error, server shutdown) `close()` frees everything
it holds: tasks, VAD model, engine slot (stream caches), tracks and the peer connection.

Its tasks and the handlers the engine and VAD threads call are supervised (and the socket routes hand their bugs
to `fail` too): an exception in one is a bug, logged once with its traceback; the client gets an `internal_error`
event and the session ends ("internal_error").
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, cast

import numpy as np
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from avatar_server.aiortc_adapter import LiveAudioJitterBuffer
from avatar_server.audio import Resampler
from avatar_server.clock import Clock, wait_event
from avatar_server.engine import Engine
from avatar_server.events import INTERNAL_ERROR, Event, Listeners, SessionState, error_event, state_event
from avatar_server.feed import AudioFeed
from avatar_server.liveness import REPORT_WAIT_S, PeerWatch
from avatar_server.playout import FrameQueue, PlayoutClock
from avatar_server.settings import ServerSettings
from avatar_server.slot import GeneratedChunk, SetStreamPose, SetStreamText, Slot, SlotCallbacks
from avatar_server.tracks import AvatarAudioTrack, AvatarVideoTrack, TrackCounters
from avatar_server.vad import VoiceWorker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionOptions:
    """What the client asked for (validated by the route)."""

    avatar: str
    fps: int
    width: int
    height: int
    text: str | None = None
    guidance: dict[str, float] | None = None


@dataclass(frozen=True)
class SessionServices:
    """What every session of a server shares: settings, workers, clock, the model's sample rate, the manager's hooks."""

    settings: ServerSettings
    engine: Engine
    voice: VoiceWorker
    clock: Clock
    sample_rate: int
    on_closed: Callable[["Session", str], None]  # the session ended, and why
    on_latency: Callable[[float], None]          # a frame's latency (the server-wide histogram)
    on_stages: Callable[[dict[str, float]], None]  # a sent frame's stage seconds (the server-wide histograms)


@dataclass(frozen=True)
class SessionAvatar:
    """What a session shows: the avatar's reference and idle image, and the model's stream options for it."""

    reference: Any
    idle: np.ndarray
    stream_options: Any


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


class Session:
    """A live avatar session; create with SessionManager.create(). Its timers, audio feed, playout clock and
    tracks run on `services.clock` (avatar_server.clock)."""

    def __init__(self, services: SessionServices, pc: RTCPeerConnection, options: SessionOptions,
                 avatar: SessionAvatar) -> None:
        settings, engine, voice, clock = services.settings, services.engine, services.voice, services.clock
        self.id = "s_" + secrets.token_hex(8)
        self.settings = settings
        self.engine = engine
        self.voice = voice
        self.pc = pc
        self.options = options
        self.rate = sample_rate = services.sample_rate
        self.clock = clock
        self.created = clock.monotonic()
        self.state = SessionState.CONNECTING
        self.closed = False
        self.close_reason: str | None = None
        self.epoch = 0  # barge-ins so far: the one counter of epochs (avatar_server.slot)
        self.interrupted_at: float | None = None
        self.speaking = False
        self.mic_buffer: LiveAudioJitterBuffer | None = None  # the microphone's RTP buffer (SessionManager sets it)
        self.spoke_at = float("-inf")  # when the input's speech last ended: the avatar speaks it a playout delay later
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()
        self.watch = PeerWatch(pc, settings.sessions.peer_timeout_s)
        self.listeners = Listeners()
        self._had_listener = False
        self._on_closed = services.on_closed
        self._on_latency_global = services.on_latency
        self._on_stages_global = services.on_stages
        self._loop = asyncio.get_running_loop()

        media = settings.media
        self.feed = AudioFeed(settings, voice, self.id, sample_rate)
        self.playout = PlayoutClock(media, origin=self.created)
        self.frames = FrameQueue(engine.frame_s)
        self.counters = TrackCounters()
        self.latencies: deque[float] = deque(maxlen=media.latency_window)
        self.generated_frames = 0
        self.steps_used = engine.max_steps
        self.video = AvatarVideoTrack(clock, self.playout, self.frames, self.feed.history, avatar.idle, options.fps,
                                      (options.width, options.height), self.counters, self._record_latency)
        self.audio = AvatarAudioTrack(clock, self.playout, self.feed.history, media.av_sync_tolerance_ms / 1000,
                                      self.counters)
        self.slot = Slot(
            session_id=self.id, reference=avatar.reference, options=avatar.stream_options,
            callbacks=SlotCallbacks(
                on_chunk=self._threadsafe(self._on_chunk), on_skip=self._threadsafe(self._on_skip),
                deadline=self.playout.wall_time, frames_buffered=lambda: len(self.frames),
                on_error=self._threadsafe(self._on_engine_error)),
        )
        self.skipped_frames = 0
        self.fps = self.generated_fps = 0.0  # frames sent / freshly generated frames shown, per second

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Join the engine and start the feeder, stats and lifetime tasks."""
        self.engine.add(self.slot)
        self.voice.add(self.id, lambda command: self.engine.submit(self.slot, command), self._threadsafe(self._on_voice))
        self.spawn(self._feed(), "feed")
        self.spawn(self._stats(), "stats")
        self.spawn(self._lifetime(), "lifetime")
        self.spawn(self._liveness(), "liveness")

    def spawn(self, coro: Any, name: str) -> asyncio.Task:
        """A task owned by this session (cancelled by close); its failure ends the session."""
        task = asyncio.create_task(coro, name=f"{self.id}:{name}")
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self.fail(f"task {task.get_name().split(':', 1)[-1]}", error)

    def fail(self, where: str, error: BaseException) -> None:
        """An internal error in this session (a bug): log it with its traceback, tell the client, end the session."""
        logger.error("session %s: %s failed", self.id, where, exc_info=error)
        if self.closed:
            return
        self.emit(INTERNAL_ERROR)
        self.spawn(self.close("internal_error"), "close")

    def on_connection_state(self, state: str) -> None:
        """Peer connection state changes (registered by the manager)."""
        if state == "connected":
            self.connected.set()
            self._set_state(SessionState.IDLE)
        elif state in ("failed", "closed"):
            self.spawn(self.close(f"peer_{state}"), "close")

    def on_remote_track(self, track: MediaStreamTrack) -> None:
        """Consume every inbound track: microphone audio feeds the avatar, anything else is discarded."""
        if track.kind == "audio":
            self.spawn(self._ingest(track), "ingest")
        else:
            self.spawn(self._discard(track), "discard")

    async def close(self, reason: str) -> None:
        """Free everything (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        logger.info("session %s closing: %s", self.id, reason)
        current = asyncio.current_task()
        others = [t for t in list(self.tasks) if t is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        try:
            self.voice.release(self.id)
            self.engine.remove(self.slot)
            self.video.stop()
            self.audio.stop()
            try:
                await asyncio.wait_for(self.pc.close(), timeout=5.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - a broken peer must not block the rest
                logger.warning("session %s: peer connection did not close cleanly", self.id)
            self.frames.clear()
            self.feed.inbox.clear()
        finally:  # whatever failed above, the session is gone for its sockets and the manager
            self._set_state(SessionState.CLOSED)
            self.ended.set()
            self.listeners.emit(None)
            self._on_closed(self, reason)

    async def _lifetime(self) -> None:
        """Connect within connect_timeout_s; end at max_duration_s."""
        sessions = self.settings.sessions
        if not await wait_event(self.clock, self.connected, sessions.connect_timeout_s):
            self.spawn(self.close("connect_timeout"), "close")
            return
        remaining = sessions.max_duration_s - (self.clock.monotonic() - self.created)
        await self.clock.sleep(max(0.0, remaining))
        self.emit(error_event("duration_limit", "session reached its maximum duration"))
        self.spawn(self.close("duration_limit"), "close")

    async def _liveness(self) -> None:
        """Once connected, end the session when the peer stops sending receiver reports (a vanished client)."""
        await self.connected.wait()
        self.watch.started = time.time()
        silence = await self.watch.wait_gone()
        logger.info("session %s: no receiver report from the peer for %.1f s", self.id, silence)
        self.spawn(self.close("peer_timeout"), "close")

    # ------------------------------------------------------------------ audio in

    async def _ingest(self, track: MediaStreamTrack) -> None:
        """Microphone: Opus frames -> 16 kHz mono -> inbox."""
        resampler = Resampler(self.rate)
        try:
            while True:
                frame = cast(AudioFrame, await track.recv())  # an audio track's frames (typed Frame | Packet)
                self.put_audio(resampler.frame(frame), live=True)
        except MediaStreamError:
            return

    async def _discard(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
        except MediaStreamError:
            return

    def put_audio(self, pcm: np.ndarray, live: bool = False) -> bool:
        """Queue input audio (mic: `live`, or WS); False when the pending-audio limit is reached."""
        return not self.closed and self.feed.put(pcm, self.clock.monotonic(), live)

    def flush(self) -> None:
        """End of utterance: feed the tail without waiting for the jitter allowance."""
        self.feed.flush()

    def interrupt(self) -> None:
        """Barge-in: drop pending audio, its frames and unplayed speech; fade to idle."""
        self.interrupted_at = now = self.clock.monotonic()
        self.feed.inbox.clear()
        self.epoch += 1
        self.voice.clear(self.id, self.epoch)
        playing = self.playout.audio_time(now)
        dropped = len(self.frames)  # everything not on screen yet came from the dropped speech
        self.frames.clear()
        self.feed.history.silence_from(int(round(playing * self.rate)))
        self.video.fade_to_idle(self.engine.frames_per_chunk)
        logger.debug("session %s interrupted: %d frames dropped", self.id, dropped)

    def set_text(self, text: str | None) -> None:
        self.engine.submit(self.slot, SetStreamText(text))

    def set_pose(self, keypoints: np.ndarray | None) -> None:
        self.engine.submit(self.slot, SetStreamPose(keypoints))

    async def _feed(self) -> None:
        """Once connected, feed audio to the stream in real time (avatar_server.feed)."""
        interval = self.settings.media.feed_interval_ms / 1000
        await self.connected.wait()  # nothing plays before the peer connects: start the stream clock then
        origin = self.playout.origin = self.clock.monotonic()
        while True:
            now = self.clock.monotonic()
            self.feed.tick(now - origin, now)
            self._update_state(now)
            # small steps, the slower rate while speech plays (its input voiced within the delay): the tracks follow
            self.playout.settle(now, speaking=self.speaking or now - self.spoke_at < self.playout.delay)
            await self.clock.sleep(interval)

    # ------------------------------------------------------------------ engine -> loop

    def _threadsafe(self, fn: Callable[..., None]) -> Callable[..., None]:
        """Wrap a loop-side handler so the engine and VAD threads can call it; its failure ends the session."""
        def guarded(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as error:  # noqa: BLE001 - logged with its traceback, and the session ends
                self.fail(f"handler {fn.__name__}", error)

        def call(*args: Any) -> None:
            try:
                self._loop.call_soon_threadsafe(guarded, *args)
            except RuntimeError:  # loop already closed (shutdown)
                pass
        return call

    def _on_chunk(self, chunk: GeneratedChunk) -> None:
        if self.closed or chunk.epoch != self.epoch:  # generated from audio a barge-in dropped
            return
        self.playout.chunk_arrived(float(chunk.times[0]), self.clock.monotonic(), chunk.held)
        self.frames.extend(chunk.times, chunk.frames)
        self.generated_frames += len(chunk.times)
        self.steps_used = chunk.steps

    def _on_voice(self, speaking: bool) -> None:
        if self.speaking and not speaking:
            self.spoke_at = self.clock.monotonic()
        self.speaking = speaking
        self._update_state(self.clock.monotonic())

    def _on_skip(self, frames: int) -> None:
        self.skipped_frames += frames

    def _on_engine_error(self, detail: str, fatal: bool) -> None:
        self.emit(error_event("engine_error", detail))
        if fatal:
            self.spawn(self.close("engine_error"), "close")

    def _record_latency(self, seconds: float) -> None:
        self.latencies.append(seconds)
        self._on_latency_global(seconds)

    def on_video_encoded(self) -> None:
        """The sender has encoded the frame the video track handed over last: its `encode` stage."""
        if self.video.handed_at is None:
            return
        stage = {"encode": max(0.0, self.clock.monotonic() - self.video.handed_at)}
        if self.slot.stages is not None:
            self.slot.stages.add(stage)
        self._on_stages_global(stage)

    # ------------------------------------------------------------------ events out

    def _update_state(self, now: float) -> None:
        if self.closed or not self.connected.is_set():
            return
        if self.speaking:
            state = SessionState.SPEAKING
        elif now - self.feed.last_input < self.settings.media.idle_after_ms / 1000:
            state = SessionState.SILENT
        else:
            state = SessionState.IDLE
        self._set_state(state)

    def _set_state(self, state: SessionState) -> None:
        if state != self.state:
            self.state = state
            self.emit(state_event(state))

    def emit(self, event: Event) -> None:
        """Send an event to every connected events socket."""
        self.listeners.emit(event)

    def attach(self) -> asyncio.Queue[Event | None]:
        """A new events socket: it gets the current state first."""
        self._had_listener = True
        return self.listeners.add(state_event(self.state))

    def detach(self, queue: asyncio.Queue[Event | None]) -> None:
        """An events socket went away; with none left and a silent peer, the session ends after the grace period."""
        self.listeners.remove(queue)
        if not self.listeners and self._had_listener and not self.closed:
            self.spawn(self._grace(time.time()), "grace")

    async def _grace(self, detached: float) -> None:
        """A closed tab ends its session; a socket someone else opened and closed does not while the peer
        still sends receiver reports after the socket went away."""
        grace = self.settings.sessions.reconnect_grace_s
        await self.clock.sleep(grace)
        if self.listeners:
            return
        if self.connected.is_set() and await self.watch.heard_since(detached, max(0.0, REPORT_WAIT_S - grace)):
            logger.info("session %s: events socket gone, its peer still reports: the session goes on", self.id)
            return
        if not self.listeners:
            await self.close("events_disconnected")

    def stats(self) -> Event:
        """The stats event (also used by the bench)."""
        values, waits = list(self.latencies), list(self.feed.waits)
        p50, p95 = percentile(values, 50), percentile(values, 95)
        return {
            "type": "stats", "fps": round(self.fps, 2), "target_fps": self.options.fps,
            "generated_fps": round(self.generated_fps, 2),
            "latency_ms_p50": None if p50 is None else round(p50 * 1000, 1),
            "latency_ms_p95": None if p95 is None else round(p95 * 1000, 1),
            "dropped_frames": self.frames.dropped, "held_frames": self.counters.frames_held + self.skipped_frames,
            "steps": self.steps_used, "playout_delay_ms": round(self.playout.delay * 1000, 1),
            "stages": self.slot.stage_summary(),
            "input_wait_ms": {} if not waits else {"p50_ms": round(1000 * float(np.percentile(waits, 50)), 1),
                                                   "p95_ms": round(1000 * float(np.percentile(waits, 95)), 1)},
            "input_dropped_ms": round(1000 * self.feed.dropped / self.rate, 1),
            "input_packets": {} if self.mic_buffer is None else {"skipped": self.mic_buffer.skipped,
                                                                  "late": self.mic_buffer.late},
        }

    async def _stats(self) -> None:
        interval = self.settings.sessions.stats_interval_s
        last_t, last_n, last_fresh = self.clock.monotonic(), 0, 0
        while True:
            await self.clock.sleep(interval)
            now, sent, fresh = self.clock.monotonic(), self.counters.frames_sent, self.counters.frames_generated_sent
            self.fps, self.generated_fps = (sent - last_n) / (now - last_t), (fresh - last_fresh) / (now - last_t)
            last_t, last_n, last_fresh = now, sent, fresh
            self.emit(self.stats())
