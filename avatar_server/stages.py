"""Where a chunk's milliseconds go, per session: the last N values of each stage and their p50/p95.

The engine records, for every chunk it generates (seconds):

- `queue`:  the chunk's audio (its F frames and the look-ahead) complete at the engine -> its generate
            call starts. Includes time the session was held back because it already had
            `engine.max_chunks_ahead` chunks waiting to play, and time other sessions' calls took.
- `sample`: conditioning + the DiT steps (`pipe.sample`) of the batch the chunk was in.
- `decode`: the VAE decode (`pipe.decode`) of that batch.
- `buffer`: chunk ready -> its first frame's play time (0 when late).
- `late`:   how far past its play time the chunk was ready (0 when on time); the playout delay grows
            by that much.

and the session, for every video frame it sends:

- `encode`: the video track hands the frame over -> aiortc has encoded it (VP8 or H.264, in its executor
            thread) and is about to send its packets.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

STAGES = ("queue", "sample", "decode", "buffer", "late", "encode")


class StageWindow:
    """The last `size` values of each stage; written by the engine thread, read by the event loop."""

    def __init__(self, size: int) -> None:
        self._values: dict[str, deque[float]] = {stage: deque(maxlen=size) for stage in STAGES}
        self._lock = threading.Lock()

    def add(self, stages: dict[str, float]) -> None:
        """One chunk's (or frame's) stage seconds (a subset of STAGES)."""
        with self._lock:
            for stage, seconds in stages.items():
                self._values[stage].append(seconds)

    def summary(self) -> dict[str, dict[str, float]]:
        """{stage: {"p50_ms", "p95_ms"}} over the window; stages without a value are left out."""
        with self._lock:
            values = {stage: np.asarray(window) for stage, window in self._values.items() if window}
        return {stage: {"p50_ms": round(float(np.percentile(v, 50)) * 1000, 1),
                        "p95_ms": round(float(np.percentile(v, 95)) * 1000, 1)} for stage, v in values.items()}
