"""A session's place in the engine: the commands it takes, what its thread keeps per session, how it reports back.

The event loop creates the Slot (avatar_server.session) and hands it to Engine.add; from then on only the engine
thread touches its stream and counters, except `commands` (a thread-safe deque others append to) and `submitted`
/ `arrivals` (written by the one thread that submits pushes).

Barge-in epochs have one owner, the session: each interrupt numbers a new epoch and sends it down with its
ClearAudio; the engine stamps every chunk with the epoch of the last clear it applied, and the session drops
chunks of an older epoch (generated from audio the interrupt discarded).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from avatar_server.stages import StageWindow

#################################################################################
#                         Commands (loop/VAD -> engine)                         #
#################################################################################


@dataclass(frozen=True)
class PushAudio:
    """Session audio for the stream, in session order (from the VAD worker)."""

    name: ClassVar[str] = "push"
    pcm: np.ndarray  # float32 mono at the model's sample rate
    voiced: bool


@dataclass(frozen=True)
class ClearAudio:
    """Barge-in: drop the stream's pending audio; chunks generated after it belong to `epoch`."""

    name: ClassVar[str] = "clear"
    epoch: int


@dataclass(frozen=True)
class SetStreamText:
    name: ClassVar[str] = "text"
    text: str | None


@dataclass(frozen=True)
class SetStreamPose:
    name: ClassVar[str] = "pose"
    keypoints: np.ndarray | None  # [K, 3]: x, y in [0, 1], visibility


@dataclass(frozen=True)
class CloseStream:
    """Free the stream and the slot (Engine.remove sends it)."""

    name: ClassVar[str] = "close"


EngineCommand = PushAudio | ClearAudio | SetStreamText | SetStreamPose | CloseStream

#################################################################################
#                            Slot (engine -> loop)                              #
#################################################################################


@dataclass(frozen=True)
class GeneratedChunk:
    """Frames the engine generated for a session."""

    frames: np.ndarray  # uint8 [F, H, W, 3]
    times: np.ndarray   # float [F]: session audio time of each frame
    epoch: int          # the barge-in epoch the chunk's audio belongs to
    steps: int          # denoising steps it was generated with
    held: float         # seconds the engine held it back because the session's frames were queued already


@dataclass
class SlotCallbacks:
    """How the worker reports back (each is called on the worker thread; they must be thread-safe)."""

    on_chunk: Callable[[GeneratedChunk], None]
    on_skip: Callable[[int], None]                   # frames not generated (held instead)
    deadline: Callable[[float], float]               # audio time -> monotonic time it plays
    frames_buffered: Callable[[], int]               # generated frames not yet played
    on_error: Callable[[str, bool], None]            # detail, fatal (the session cannot go on)


@dataclass
class Slot:
    """A session's place in the engine."""

    session_id: str
    reference: Any
    options: Any
    callbacks: SlotCallbacks
    commands: deque[EngineCommand] = field(default_factory=deque)
    stream: Any = None
    epoch: int = 0                  # of the last ClearAudio applied (the session numbers them)
    pushed: int = 0                 # samples pushed to the stream (session audio time * rate)
    stream_next: float = 0.0        # stream audio time of the next frame
    time_offset: float = 0.0        # session audio time - stream audio time (moves on every clear)
    next_time: float | None = None  # session audio time of the next chunk's first frame
    fresh: bool = False             # backlog just dropped: the next chunk is generated, late or not
    last_held: float = float("-inf")  # when the worker last found the stream ready but its session's frames full
    closed: bool = False
    released: threading.Event = field(default_factory=threading.Event)
    submitted: int = 0              # samples submitted in push commands (written by the submitting thread)
    arrivals: deque[tuple[int, float]] = field(default_factory=deque)  # (submitted after a push, when)
    stages: StageWindow | None = None  # set by Engine.add

    def stage_summary(self) -> dict[str, dict[str, float]]:
        """p50/p95 ms of each stage over the session's last chunks (for the stats event)."""
        return {} if self.stages is None else self.stages.summary()
