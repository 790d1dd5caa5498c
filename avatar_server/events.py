"""What a session tells its events sockets: its state, errors, stats; and the queues that carry them.

Events are JSON objects with a `type`: `{"type": "state", "state": ...}`, `{"type": "error", "code", "detail"}`
and `{"type": "stats", ...}` (built by the session). Every events socket of a session reads its own bounded
queue; `None` in a queue means the session ended.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import Any

EVENT_QUEUE_SIZE = 256

Event = dict[str, Any]


class SessionState(StrEnum):
    """A session's state as clients see it (the `state` event, `GET /v1/sessions/{id}`)."""

    CONNECTING = "connecting"  # created, the peer has not connected yet
    IDLE = "idle"              # connected, no input for `media.idle_after_ms`
    SILENT = "silent"          # input is being fed, but no speech in it
    SPEAKING = "speaking"      # the voice activity detector hears speech
    CLOSED = "closed"          # ended; nothing follows


def state_event(state: SessionState) -> Event:
    return {"type": "state", "state": state}


def error_event(code: str, detail: str) -> Event:
    return {"type": "error", "code": code, "detail": detail}


INTERNAL_ERROR = error_event("internal_error", "the server hit an internal error; the session ends")


class Listeners:
    """The events sockets of one session: each reads its own queue, and a slow one loses its oldest events."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Event | None]] = set()

    def __len__(self) -> int:
        return len(self._queues)

    def add(self, first: Event) -> asyncio.Queue[Event | None]:
        """A queue for a new socket, holding `first`."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(EVENT_QUEUE_SIZE)
        queue.put_nowait(first)
        self._queues.add(queue)
        return queue

    def remove(self, queue: asyncio.Queue[Event | None]) -> None:
        self._queues.discard(queue)

    def emit(self, event: Event | None) -> None:
        """`event` to every socket; None: the session ended."""
        for queue in list(self._queues):
            enqueue(queue, event)


def enqueue(queue: asyncio.Queue[Event | None], event: Event | None) -> None:
    """Queue an event without waiting: a full queue drops its oldest event, never blocks the session."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(event)
