"""Shared helpers for server tests: real aiortc offers, candidate floods, the server's ERROR records, test
signals and the lip-sync measure."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from aiortc import RTCPeerConnection

SERVER_LOGGERS = ("", "uvicorn.error", "avatar_server", "aiortc")
RATE = 16000
GRID_S = 0.005  # the lip-sync measure samples both envelopes every 5 ms


def tone_bursts(seconds: float, pattern_ms: tuple[int, ...] = (240, 360, 160, 440, 200, 280, 320, 120)) -> np.ndarray:
    """A 300 Hz tone switched on and off in an irregular pattern (so the lag search has one answer)."""
    t = np.arange(int(seconds * RATE)) / RATE
    on = np.zeros(t.size, bool)
    edge, state, i = 0.0, False, 0
    while edge < seconds:
        length = pattern_ms[i % len(pattern_ms)] / 1000
        on[(t >= edge) & (t < edge + length)] = state
        edge, state, i = edge + length, not state, i + 1
    return (0.5 * np.sin(2 * np.pi * 300 * t) * on).astype(np.float32)


def on_grid(events: list[tuple[float, bool]], grid: np.ndarray) -> np.ndarray:
    """A (time, value) series held from each event to the next, sampled at `grid` (False before the first)."""
    times = np.array([e[0] for e in events])
    values = np.array([e[1] for e in events])
    idx = np.searchsorted(times, grid, side="right") - 1
    return np.where(idx >= 0, values[np.clip(idx, 0, None)], False)


def envelopes(video: list[tuple[float, bool]], audio: list[tuple[float, bool]],
              start: float) -> tuple[np.ndarray, np.ndarray]:
    """Mouth-open and sound-on, each a (time, value) series, on a 5 ms grid from `start` to where both end."""
    grid = np.arange(start, min(video[-1][0], audio[-1][0]), GRID_S)
    return on_grid(video, grid), on_grid(audio, grid)


def best_lag(video: np.ndarray, audio: np.ndarray, max_lag_s: float = 0.3) -> tuple[float, float]:
    """(lag, agreement): video[i] best matches audio[i - lag]; positive lag = video behind audio."""
    best = (0.0, -1.0)
    n = int(max_lag_s / GRID_S)
    for k in range(-n, n + 1):
        v = video[max(k, 0): len(video) + min(k, 0)]
        a = audio[max(-k, 0): len(audio) - max(k, 0)]
        score = float(np.mean(v == a))
        if score > best[1]:
            best = (k * GRID_S, score)
    return best


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
