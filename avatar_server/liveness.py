"""Is the peer still there? The arrival times of its RTCP receiver reports about our tracks.

Every WebRTC receiver reports on the streams it gets (RFC 3550 receiver reports: aiortc every
0.5-1.5 s, browsers about every second for video). The server always sends video, so a live peer
keeps reporting; a crashed browser, a killed process or a pulled cable stops at once. aiortc's own
signal, ICE consent freshness, gives up only after 30 s; this watch ends a session after
`sessions.peer_timeout_s` without a report.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiortc import RTCPeerConnection

logger = logging.getLogger(__name__)

POLL_S = 0.5          # how often the reports are read
REPORT_WAIT_S = 2.0   # a live peer reports within this (receiver reports come about every second)


class PeerWatch:
    """Reads when the peer's latest receiver report arrived (sender stats, `remote-inbound-rtp`)."""

    def __init__(self, pc: RTCPeerConnection, timeout_s: float, poll_s: float = POLL_S) -> None:
        self.pc = pc
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.started = time.time()

    async def last_report(self) -> float:
        """Wall-clock arrival of the newest report about one of our tracks; 0.0 when none came yet."""
        newest = 0.0
        for sender in self.pc.getSenders():
            try:
                report = await sender.getStats()
            except Exception as error:  # noqa: BLE001 - a sender being torn down has no stats
                logger.debug("no sender stats: %r", error)
                continue
            for stats in report.values():
                if getattr(stats, "type", None) == "remote-inbound-rtp":
                    newest = max(newest, stats.timestamp.timestamp())
        return newest

    async def heard_since(self, since: float, wait_s: float) -> bool:
        """Whether a report arrives after `since` (wall clock), waiting up to `wait_s` for one."""
        deadline = time.monotonic() + wait_s
        while True:
            if await self.last_report() > since:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_s)

    async def silent_for(self) -> float:
        """Seconds since the peer was last heard (counted from the watch's start before the first report)."""
        return time.time() - max(await self.last_report(), self.started)

    async def wait_gone(self) -> float:
        """Return (the silence in seconds) once the peer has sent no report for `timeout_s`."""
        while True:
            await asyncio.sleep(self.poll_s)
            silence = await self.silent_for()
            if silence > self.timeout_s:
                return silence
