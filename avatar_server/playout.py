"""Playout: when each stream audio time is shown/played, and the frames waiting for their turn.

Audio time t (seconds of audio pushed to the stream) plays at `origin + t + delay`. Both outbound
tracks read the same clock, so a frame and the audio it was generated from leave together. The
delay is the measured pipeline latency: it grows at once when a chunk arrives late and gives
unused slack back slowly, within [min_latency, max_latency].
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from avatar_server.settings import MediaSettings


class PlayoutClock:
    """Stream audio time <-> monotonic time (the session's Clock), with an adaptive delay."""

    def __init__(self, settings: MediaSettings, origin: float) -> None:
        self.min_delay = settings.min_latency_ms / 1000.0
        self.max_delay = settings.max_latency_ms / 1000.0
        self.margin = settings.latency_margin_ms / 1000.0
        self.decay_rate = settings.latency_decay_ms_per_s / 1000.0
        self.delay = settings.initial_latency_ms / 1000.0
        self.origin = origin  # when audio time 0 was fed (the session sets it when the peer connects)
        self._min_slack = float("inf")
        self._last_decay = self.origin

    def wall_time(self, audio_time: float) -> float:
        """Monotonic time at which `audio_time` plays."""
        return self.origin + audio_time + self.delay

    def audio_time(self, wall: float) -> float:
        """Audio time playing at monotonic time `wall`."""
        return wall - self.origin - self.delay

    def chunk_arrived(self, audio_time: float, now: float) -> None:
        """A chunk whose first frame has `audio_time` is ready at `now`: adapt the delay."""
        slack = self.wall_time(audio_time) - now
        if slack < self.margin:
            self.delay = min(self.max_delay, self.delay + self.margin - slack)
        self._min_slack = min(self._min_slack, slack)

    def decay(self, now: float) -> None:
        """Give back slack that chunks did not need since the last call."""
        elapsed = now - self._last_decay
        if self._min_slack != float("inf") and self._min_slack > self.margin:
            step = min(self.decay_rate * elapsed, self._min_slack - self.margin)
            self.delay = max(self.min_delay, self.delay - step)
        self._min_slack = float("inf")
        self._last_decay = now


@dataclass
class TimedFrame:
    audio_time: float
    image: np.ndarray  # uint8 [H, W, 3]


class FrameQueue:
    """Generated frames in audio-time order; the video track takes the one due now."""

    def __init__(self, frame_s: float) -> None:
        self.frame_s = frame_s
        self._frames: deque[TimedFrame] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._frames)

    def extend(self, times: np.ndarray, frames: np.ndarray) -> None:
        for t, image in zip(times, frames):
            self._frames.append(TimedFrame(float(t), image))

    def take(self, audio_time: float) -> TimedFrame | None:
        """The newest frame due at `audio_time` (older ones count as dropped); None if none is due."""
        due = audio_time + self.frame_s / 2
        chosen = None
        while self._frames and self._frames[0].audio_time <= due:
            if chosen is not None:
                self.dropped += 1
            chosen = self._frames.popleft()
        return chosen

    def clear(self) -> None:
        self._frames.clear()
