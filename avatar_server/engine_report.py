"""What the engine reports to the rest of the server: its counters and an observer told of every call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class EngineObserver(Protocol):
    """Told about every generate call and chunk, on the worker thread (avatar_server.metrics.Metrics)."""

    def generate_call(self, seconds: float) -> None: ...

    def degraded_chunks(self, count: int) -> None: ...

    def chunk_stages(self, stages: dict[str, float]) -> None: ...


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
