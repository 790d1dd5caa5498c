"""The engine: one worker thread per device that batches ready chunks of all sessions.

Only the worker thread touches the streams: the event loop (and the VAD worker, for audio) enqueue
commands on a session's Slot and the worker applies them before each batch, so the loop never
waits for the model.
Every chunk has a deadline (when its first frame must be played). The worker keeps the default
denoising steps whenever the cost model (avatar_server/cost_model.py) says they meet it and keep up
with real time; otherwise it uses the most steps that do, never fewer than `min_steps` (the larger of
`engine.min_steps` and the checkpoint's validated `sampler.min_steps`); when even `min_steps` is more
than a chunk late it drops that session's backlog so its video holds a frame for a moment instead of
building a queue. Each chunk's stage times (avatar_server/stages.py) go to its session's window and
to an optional observer (/metrics).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, assert_never

import numpy as np

from avatar_server.cost_model import CostModel
from avatar_server.engine_report import EngineObserver
from avatar_server.settings import EngineSettings
from avatar_server.slot import (
    ClearAudio,
    CloseStream,
    EngineCommand,
    GeneratedChunk,
    PushAudio,
    SetStreamPose,
    SetStreamText,
    Slot,
)
from avatar_server.stages import StageWindow
from avatar_server.warmup import WarmUp, run_warm_up

logger = logging.getLogger(__name__)


#################################################################################
#                                    Engine                                     #
#################################################################################


@dataclass
class EngineStats:
    """The worker's counters and last call, read by /metrics and tests (written by the worker only)."""

    batches: int = 0
    chunks: int = 0
    skipped_frames: int = 0
    last_batch: int = 0
    last_steps: int = 0
    last_generate_s: float = 0.0
    queue_depth: int = 0


class Engine:
    """One worker thread driving `pipe.generate` for every session on one device."""

    def __init__(self, pipe: Any, settings: EngineSettings, steps: int | None = None,
                 clock: Callable[[], float] = time.monotonic, observer: EngineObserver | None = None) -> None:
        self.pipe = pipe
        self.settings = settings
        self.max_steps = steps or int(pipe.config.steps)
        # never below what the checkpoint's evaluation validated (pipeline.json sampler.min_steps)
        validated = int(getattr(pipe.config, "min_steps", 1))
        self.min_steps = min(max(settings.min_steps, validated), self.max_steps)
        self.frames_per_chunk = int(pipe.config.chunk_frames)
        self.frame_s = 1.0 / float(pipe.config.fps)
        self.sample_rate = int(pipe.config.sample_rate)
        self.lookahead_frames = int(pipe.config.lookahead_frames)
        self.clock = clock
        self.observer = observer
        self.cost = CostModel(settings.cost_smoothing)
        self._warm_batches: set[int] = set()  # batch sizes past their first (warm-up) call
        self._cuda = str(getattr(pipe, "device", "cpu")).startswith("cuda")
        self.stats = EngineStats()
        self._slots: dict[str, Slot] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opener = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnilive-open")
        self.warmed = threading.Event()  # the worker ran its warm-up (or had none): the server may report ready
        self.error: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, torch_threads: int | None = None, warm_up: WarmUp | None = None) -> None:
        """Start the worker; `torch_threads` sets its intra-op threads (a per-thread setting in torch); `warm_up`
        runs first, on the worker (`warmed` is set when it is done)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(torch_threads, warm_up), name="omnilive-engine",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker after it closes every stream it still holds."""
        self._stop.set()
        self._wake.set()
        self._opener.shutdown(wait=True, cancel_futures=True)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    @property
    def slot_count(self) -> int:
        with self._lock:
            return len(self._slots)

    # ------------------------------------------------------------------ loop-side API

    def add(self, slot: Slot) -> None:
        """Register a session. Its stream is opened on a side thread (it runs the reference through
        the model), so a joining session does not stall the others; its commands wait until then."""
        slot.stages = StageWindow(self.settings.stage_window)
        with self._lock:
            self._slots[slot.session_id] = slot
        self._opener.submit(self._open, slot)

    def _open(self, slot: Slot) -> None:
        try:
            stream = self.pipe.open_stream(slot.reference, slot.options)
        except Exception as error:
            logger.exception("session %s: opening the stream failed", slot.session_id)
            slot.callbacks.on_error(f"opening the stream failed: {error}", True)
            return
        with self._lock:
            if slot.closed:
                stream.close()
            else:
                slot.stream = stream
        self._wake.set()

    def submit(self, slot: Slot, command: EngineCommand) -> None:
        """Queue a command for the worker. Pushes come from one thread per session (the VAD worker); their arrival
        times feed the `queue` stage."""
        if isinstance(command, PushAudio):
            slot.submitted += command.pcm.size
            slot.arrivals.append((slot.submitted, self.clock()))
        slot.commands.append(command)
        self._wake.set()

    def remove(self, slot: Slot) -> None:
        """Close the session's stream and free its slot (idempotent; the worker does the freeing)."""
        if not slot.closed:
            slot.closed = True
            self.submit(slot, CloseStream())
        if not self.running:  # no worker: free here
            self._release(slot)

    # ------------------------------------------------------------------ worker

    def _run(self, torch_threads: int | None, warm_up: WarmUp | None) -> None:
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        try:
            if warm_up is not None:
                frames = 2 * self.frames_per_chunk + self.lookahead_frames  # a chunk's frames and look-ahead, with room
                run_warm_up(self.pipe, warm_up, min(warm_up.sessions, self.settings.max_batch), self.max_steps,
                            int(round(frames * self.frame_s * self.sample_rate)))
        finally:
            self.warmed.set()
        logger.info("engine worker started (steps %d..%d, max batch %d)", self.min_steps, self.max_steps,
                    self.settings.max_batch)
        try:
            while not self._stop.is_set():
                if not self.step():
                    self._wake.wait(timeout=0.05)
                    self._wake.clear()
        except Exception as error:  # the worker must never die silently
            logger.exception("engine worker failed")
            self.error = f"{type(error).__name__}: {error}"
        finally:
            with self._lock:
                slots = list(self._slots.values())
            for slot in slots:
                self._release(slot)
            logger.info("engine worker stopped")

    def step(self) -> bool:
        """One round of the worker: apply the queued commands, then generate one batch; False when no stream was
        ready. The worker thread loops on it; a test on virtual time calls it instead of starting the worker."""
        self._apply_commands()
        batch = self._select()
        if batch:
            self._run_batch(batch)
        return bool(batch)

    def _apply_commands(self) -> None:
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            if slot.stream is None and not slot.closed:
                continue  # still opening: its commands wait
            while slot.commands:
                command = slot.commands.popleft()
                try:
                    self._apply(slot, command)
                except Exception as error:  # a bad command hurts only its session
                    logger.exception("session %s: command %s failed", slot.session_id, command.name)
                    slot.callbacks.on_error(f"{command.name} failed: {error}", False)
                if slot.released.is_set():
                    break

    def _apply(self, slot: Slot, command: EngineCommand) -> None:
        if isinstance(command, CloseStream):
            self._release(slot)
            return
        if slot.closed:
            return
        match command:
            case PushAudio(pcm=pcm, voiced=voiced):
                slot.stream.push_audio(pcm, voiced=voiced)
                slot.pushed += pcm.size
            case ClearAudio(epoch=epoch):
                self._clear(slot)
                slot.epoch = epoch
            case SetStreamText(text=text):
                slot.stream.set_text(text)
            case SetStreamPose(keypoints=keypoints):
                slot.stream.set_pose(keypoints)
            case _:
                assert_never(command)

    def _clear(self, slot: Slot) -> None:
        """Drop the stream's pending audio. Audio pushed next drives the stream's next frame, so the
        stream's clock falls behind the session's by the dropped audio: remember the offset."""
        slot.stream.clear_buffer()
        slot.time_offset = slot.pushed / self.sample_rate - slot.stream_next
        slot.next_time = slot.pushed / self.sample_rate
        slot.fresh = True

    def _release(self, slot: Slot) -> None:
        """Free the stream of a session and drop its slot (worker thread or after stop)."""
        if slot.released.is_set():
            return
        with self._lock:  # the opener thread checks `closed` under the same lock
            slot.closed = True
            stream, slot.stream = slot.stream, None
        try:
            if stream is not None:
                stream.close()
        finally:
            slot.commands.clear()
            with self._lock:
                self._slots.pop(slot.session_id, None)
            slot.released.set()

    def _select(self) -> list[Slot]:
        """Ready streams with room in their output buffer, earliest deadline first; a ready stream without room is
        held back (and when, noted: its session's playout is not to count that wait as the pipeline's)."""
        with self._lock:
            slots = [s for s in self._slots.values() if s.stream is not None and not s.closed]
        room = self.settings.max_chunks_ahead * self.frames_per_chunk
        now = self.clock()
        ready = []
        for slot in slots:
            if not slot.stream.ready():
                continue
            if slot.callbacks.frames_buffered() >= room:
                slot.last_held = now
            else:
                ready.append(slot)
        ready.sort(key=self._deadline)
        self.stats.queue_depth = max(0, len(ready) - self.settings.max_batch)
        return ready[: self.settings.max_batch]

    def _deadline(self, slot: Slot) -> float:
        """When the next chunk's first frame plays (now when unknown)."""
        if slot.next_time is None:
            return self.clock()
        return slot.callbacks.deadline(slot.next_time) - self.settings.deadline_margin_ms / 1000.0

    def _plan(self, batch: list[Slot]) -> tuple[list[Slot], int]:
        """Steps for this batch (see _steps). Sessions too late even at min_steps drop their backlog (held frames).

        A session that just dropped its backlog (`fresh`) holds the newest audio there is: it is
        generated as fast as possible, late or not, so a slow device still shows fresh frames.
        """
        now = self.clock()
        chunk_s = self.frames_per_chunk * self.frame_s
        run = list(batch)
        while run:
            deadline = min(self._deadline(s) for s in run)
            steps = self._steps(len(run), deadline - now, chunk_s)
            stale = [s for s in run if not s.fresh]
            if now + self.cost.estimate(len(run), steps) <= deadline + chunk_s or not stale:
                return run, steps
            victim = min(stale, key=self._deadline)  # the most overdue session
            run.remove(victim)
            self._skip(victim)
        return run, self.max_steps

    def _steps(self, batch: int, budget_s: float, chunk_s: float) -> int:
        """The most steps in [min_steps, max_steps] whose predicted call meets the first deadline (`budget_s`
        from now) and keeps up with real time (one call per chunk); none does: min_steps, the least late."""
        for steps in range(self.max_steps, self.min_steps - 1, -1):
            seconds = self.cost.estimate(batch, steps)
            if seconds <= budget_s and seconds <= chunk_s:
                return steps
        return self.min_steps

    def _skip(self, slot: Slot) -> None:
        """Drop a late session's pending audio: its video holds while it catches up."""
        frames = int(round((self.clock() - self._deadline(slot)) / self.frame_s)) + self.frames_per_chunk
        self._clear(slot)
        self.stats.skipped_frames += frames
        slot.callbacks.on_skip(frames)

    def _ready_time(self, slot: Slot) -> float:
        """When the audio of the slot's next chunk (its frames and the look-ahead) was complete at the engine."""
        first = slot.next_time if slot.next_time is not None else 0.0  # session audio time
        need = (first + (self.frames_per_chunk + self.lookahead_frames) * self.frame_s) * self.sample_rate - 0.5
        arrivals = slot.arrivals
        last = None
        while arrivals and arrivals[0][0] < need:
            last = arrivals.popleft()
        if arrivals:
            return arrivals[0][1]
        return last[1] if last is not None else self.clock()

    def _sync(self) -> None:
        """Wait for the device (CUDA returns before its work is done), so the two halves are timed apart."""
        if self._cuda:
            import torch

            torch.cuda.synchronize(self.pipe.device)

    def _run_batch(self, batch: list[Slot]) -> None:
        run, steps = self._plan(batch)
        if not run:
            return
        epochs = [s.epoch for s in run]
        ready = [self._ready_time(s) for s in run]
        started = self.clock()
        try:
            latents = self.pipe.sample([s.stream for s in run], steps=steps)
            self._sync()
            sampled = self.clock()
            chunks = self.pipe.decode(latents)
        except Exception as error:  # a failing batch ends its sessions, never the worker
            logger.exception("generate failed for sessions %s", [s.session_id for s in run])
            for slot in run:
                slot.callbacks.on_error(f"generation failed: {error}", True)
            return
        finished = self.clock()
        self._measure(len(chunks), steps, sampled - started, finished - sampled)
        st = self.stats
        st.batches += 1
        st.chunks += len(chunks)
        if steps < self.max_steps and self.observer is not None:
            self.observer.degraded_chunks(len(chunks))
        st.last_batch, st.last_steps, st.last_generate_s = len(chunks), steps, finished - started
        by_stream = {id(chunk.stream): chunk for chunk in chunks}  # streams that were not ready are left out
        for slot, epoch, ready_at in zip(run, epochs, ready):
            chunk = by_stream.get(id(slot.stream))
            if chunk is None:
                continue
            stream_times = np.asarray(chunk.audio_time_s, dtype=np.float64)
            slot.stream_next = float(stream_times[-1]) + self.frame_s
            times = stream_times + slot.time_offset  # session audio time
            slack = slot.callbacks.deadline(float(times[0])) - finished
            self._record(slot, {"queue": max(0.0, started - ready_at), "sample": sampled - started,
                                "decode": finished - sampled, "buffer": max(0.0, slack), "late": max(0.0, -slack)})
            slot.next_time = float(times[-1]) + self.frame_s
            slot.fresh = False
            held = max(0.0, slot.last_held - ready_at)
            slot.callbacks.on_chunk(GeneratedChunk(chunk.frames, times, epoch, steps, held))

    def _measure(self, batch: int, steps: int, sample_s: float, decode_s: float) -> None:
        """Feed a call to the cost model (the first call of each batch size is a warm-up: left out) and the observer."""
        if batch == 0:
            return
        if batch in self._warm_batches:
            self.cost.update(batch, steps, sample_s, decode_s)
        else:
            self._warm_batches.add(batch)
        if self.observer is not None:
            self.observer.generate_call(sample_s + decode_s)

    def _record(self, slot: Slot, stages: dict[str, float]) -> None:
        if slot.stages is not None:
            slot.stages.add(stages)
        if self.observer is not None:
            self.observer.chunk_stages(stages)
