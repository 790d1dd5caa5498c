"""What the engine tells the rest of the server as it works: the observer of every call (avatar_server.metrics)."""

from __future__ import annotations

from typing import Protocol


class EngineObserver(Protocol):
    """Told about every generate call and chunk, on the worker thread (avatar_server.metrics.Metrics)."""

    def generate_call(self, seconds: float) -> None: ...

    def degraded_chunks(self, count: int) -> None: ...

    def chunk_stages(self, stages: dict[str, float]) -> None: ...
