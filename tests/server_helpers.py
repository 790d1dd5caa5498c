"""Shared helpers for server tests: real aiortc offers, candidate floods, the server's ERROR records."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from aiortc import RTCPeerConnection

SERVER_LOGGERS = ("", "uvicorn.error", "avatar_server", "aiortc")


async def offer_sdp() -> str:
    """A real recvonly (video + audio) SDP offer from aiortc; its peer connection is closed again."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def with_candidates(sdp: str, per_mid: int) -> str:
    """The offer with `per_mid` extra host candidates after each a=mid line."""
    out = []
    for line in sdp.split("\r\n"):
        out.append(line)
        if line.startswith("a=mid:"):
            out += [f"a=candidate:{i} 1 udp 2130706431 10.0.{i // 250}.{i % 250} {10000 + i} typ host"
                    for i in range(per_mid)]
    return "\r\n".join(out)


class ErrorRecords(logging.Handler):
    """Collects ERROR records (a client mistake must not log one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]


@contextmanager
def error_records() -> Iterator[ErrorRecords]:
    """ERROR records of the server's loggers while the block runs."""
    handler = ErrorRecords()
    loggers = [logging.getLogger(name) for name in SERVER_LOGGERS]
    for target in loggers:
        target.addHandler(handler)
    try:
        yield handler
    finally:
        for target in loggers:
            target.removeHandler(handler)
