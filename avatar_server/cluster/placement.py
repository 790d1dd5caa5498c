"""Admission over the pool: a new session goes to the least-loaded worker with a free slot.

Every count and reservation happens on the front's event loop with no `await` between reading a worker's
free slots and taking one, so concurrent requests never share the last slot (the same rule as the
avatar store's reservations). A reservation becomes the session once its worker answers 201, and is
given back otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from avatar_server.problems import Problem


@dataclass
class Load:
    """One worker as admission sees it: its capacity, the sessions it holds and the slots reserved on it."""

    name: str
    capacity: int = 0
    sessions: dict[str, float] = field(default_factory=dict)  # session id -> when the front recorded it (monotonic)
    reserved: int = 0
    up: bool = False
    draining: bool = False
    up_since: float = 0.0  # monotonic time it last came up
    draining_set: float = 0.0  # monotonic time the front last drained or resumed it

    @property
    def free(self) -> int:
        """Slots a new session may take (0 while down or draining)."""
        if not self.up or self.draining:
            return 0
        return max(0, self.capacity - len(self.sessions) - self.reserved)

    def drain(self, draining: bool, at: float) -> None:
        """The front drains (or resumes) it at monotonic time `at`."""
        self.draining, self.draining_set = draining, at

    def reconcile(self, live: Iterable[str], draining: bool, asked_at: float) -> None:
        """The worker's own list of live sessions and draining flag, read from a status asked at `asked_at`:
        sessions it ended by itself leave; those recorded after the ask are kept, and a drain or resume made
        after it stands (the status could not know them yet)."""
        if asked_at > self.draining_set:
            self.draining = draining
        live = set(live)
        for session_id, recorded in list(self.sessions.items()):
            if session_id not in live and recorded < asked_at:
                del self.sessions[session_id]
        for session_id in live - set(self.sessions):
            self.sessions[session_id] = asked_at


class Placement:
    """Least loaded first (most free slots; ties to the worker up longest, since a restarted one is cold)."""

    def __init__(self, loads: Iterable[Load], retry_after_s: int) -> None:
        self.loads = list(loads)
        self.retry_after_s = retry_after_s

    def reserve(self, exclude: Iterable[str] = ()) -> Load:
        """Take a slot on the least-loaded worker; Problem 503 with Retry-After when none has one."""
        skip = set(exclude)
        candidates = [load for load in self.loads if load.free > 0 and load.name not in skip]
        if not candidates:
            capacity = sum(load.capacity for load in self.loads if load.up and not load.draining)
            raise Problem(503, f"all {capacity} session slots of the pool are in use; retry later", code="capacity",
                          headers={"Retry-After": str(self.retry_after_s)})
        best = min(candidates, key=lambda load: (-load.free, load.up_since))
        best.reserved += 1
        return best

    @staticmethod
    def commit(load: Load, session_id: str) -> None:
        """The reserved slot is now this session's."""
        load.reserved -= 1
        load.sessions[session_id] = time.monotonic()

    @staticmethod
    def release(load: Load) -> None:
        """Give back a reservation that did not become a session."""
        load.reserved -= 1

    def owner(self, session_id: str) -> Load | None:
        """The worker holding a session, if the front knows it."""
        return next((load for load in self.loads if session_id in load.sessions), None)

    @property
    def capacity(self) -> int:
        """Slots of the workers that take sessions (up, not draining)."""
        return sum(load.capacity for load in self.loads if load.up and not load.draining)

    @property
    def sessions(self) -> int:
        return sum(len(load.sessions) for load in self.loads)
