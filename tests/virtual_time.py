"""Virtual time for server tests: an avatar_server.clock.Clock that moves only when the test moves it.

`VirtualClock.run(seconds, between)` wakes the sleepers in time order; before each wake-up the event loop settles
and `between()` runs (the engine and VAD workers, stepped on the test's thread), so a test sees exactly what the
session, its playout clock and its tracks do at every instant, however busy the machine is.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Callable

SETTLE_YIELDS = 5  # loop iterations that let woken tasks run up to their next sleep (chains here are short)


async def settle() -> None:
    """Let every task that can run, run (a few iterations of the event loop)."""
    for _ in range(SETTLE_YIELDS):
        await asyncio.sleep(0)


class VirtualClock:
    """Monotonic time that stands still until `run` moves it; `sleep` waits for it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), wake))
        await wake

    async def run(self, seconds: float, between: Callable[[], None] = lambda: None) -> None:
        """Move time `seconds` forward, waking each sleeper at its time, in order."""
        end = self.now + seconds
        while True:
            await settle()
            between()
            await settle()
            if not self._sleepers or self._sleepers[0][0] > end:
                break
            when, _, wake = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            if not wake.done():  # a cancelled sleeper is done already
                wake.set_result(None)
        self.now = end
