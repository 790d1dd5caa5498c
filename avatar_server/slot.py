"""A session's place in the engine: what the engine thread keeps per session, and how it reports back.

The event loop creates the Slot (avatar_server.session) and hands it to Engine.add; from then on only the engine
thread touches its stream and counters, except `commands` (a thread-safe deque others append to) and `submitted`
/ `arrivals` (written by the one thread that submits pushes).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from avatar_server.stages import StageWindow


@dataclass
class SlotCallbacks:
    """How the worker reports back (each is called on the worker thread; they must be thread-safe)."""

    on_chunk: Callable[[np.ndarray, np.ndarray, int, int], None]  # frames, session audio times, epoch, steps
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
    commands: deque = field(default_factory=deque)
    stream: Any = None
    epoch: int = 0
    pushed: int = 0                 # samples pushed to the stream (session audio time * rate)
    stream_next: float = 0.0        # stream audio time of the next frame
    time_offset: float = 0.0        # session audio time - stream audio time (moves on every clear)
    next_time: float | None = None  # session audio time of the next chunk's first frame
    fresh: bool = False             # backlog just dropped: the next chunk is generated, late or not
    closed: bool = False
    released: threading.Event = field(default_factory=threading.Event)
    submitted: int = 0              # samples submitted in push commands (written by the submitting thread)
    arrivals: deque[tuple[int, float]] = field(default_factory=deque)  # (submitted after a push, when)
    stages: StageWindow | None = None  # set by Engine.add

    def stage_summary(self) -> dict[str, dict[str, float]]:
        """p50/p95 ms of each stage over the session's last chunks (for the stats event)."""
        return {} if self.stages is None else self.stages.summary()
