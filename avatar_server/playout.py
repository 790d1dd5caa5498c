"""Playout: when each stream audio time is shown/played, and the frames waiting for their turn.

Audio time t (seconds of audio pushed to the stream) plays at `origin + t + delay`. Both outbound
tracks read the same clock, so a frame and the audio it was generated from leave together.

The delay follows what the pipeline needs. Each chunk tells the delay it needed (arrival - origin -
its first frame's audio time) less the time the engine held it back because the session's frames
were queued already: that wait comes from the delay itself, and counting it would keep a large delay
large. The target is a high percentile of those samples over a recent window plus a margin, within
[min_latency, max_latency]. A chunk that arrives later than the delay allows raises it at once (no
frozen video); a delay above its target comes down at a bounded rate: `latency_decay_ms_per_s` while the avatar is
silent, `latency_speech_decay_ms_per_s` (slower) while it speaks. The session settles the delay every feed tick, so it
moves in steps of a fraction of a millisecond: the video shows its frames that much faster (one frame skipped per
frame time the delay came down) and the audio track plays its audio slightly faster until it has caught up
(avatar_server.tracks), never jumping over speech.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from avatar_server.settings import MediaSettings


class PlayoutClock:
    """Stream audio time <-> monotonic time (the session's Clock), with a delay that follows the pipeline's p95."""

    def __init__(self, settings: MediaSettings, origin: float) -> None:
        self.min_delay = settings.min_latency_ms / 1000.0
        self.max_delay = settings.max_latency_ms / 1000.0
        self.margin = settings.latency_margin_ms / 1000.0
        self.decay_rate = settings.latency_decay_ms_per_s / 1000.0
        self.speech_decay_rate = settings.latency_speech_decay_ms_per_s / 1000.0
        self.window_s = settings.latency_target_window_s
        self.percentile = settings.latency_target_percentile
        self.delay = settings.initial_latency_ms / 1000.0
        self.origin = origin  # when audio time 0 was fed (the session sets it when the peer connects)
        self._needed: deque[tuple[float, float]] = deque()  # (arrival, delay the chunk needed), oldest first
        self._last_settle = origin
        self._target: float | None = None  # the percentile of `_needed`, kept until it changes (settled every tick)

    def wall_time(self, audio_time: float) -> float:
        """Monotonic time at which `audio_time` plays."""
        return self.origin + audio_time + self.delay

    def audio_time(self, wall: float) -> float:
        """Audio time playing at monotonic time `wall`."""
        return wall - self.origin - self.delay

    def chunk_arrived(self, audio_time: float, now: float, held: float) -> None:
        """A chunk whose first frame has `audio_time` is ready at `now`, after the engine held it back `held` seconds
        for room in the session's frame queue: raise the delay at once if it is late, and record what it needed."""
        needed = now - self.origin - audio_time
        if needed + self.margin > self.delay:
            self.delay = min(self.max_delay, needed + self.margin)
        self._needed.append((now, needed - held))
        self._target = None
        self._forget(now)

    def target(self, now: float) -> float | None:
        """The percentile of the delays chunks needed over the window, plus the margin, within the limits; None
        before any chunk arrived in the window."""
        self._forget(now)
        if not self._needed:
            return None
        if self._target is None:
            self._target = float(np.percentile([value for _, value in self._needed], self.percentile))
        return min(self.max_delay, max(self.min_delay, self._target + self.margin))

    def settle(self, now: float, speaking: bool) -> None:
        """Called often (every feed tick): move a delay above its target down towards it, by at most
        `latency_decay_ms_per_s` (silent) or `latency_speech_decay_ms_per_s` (`speaking`) for each second since the
        last call."""
        elapsed, self._last_settle = now - self._last_settle, now
        rate = self.speech_decay_rate if speaking else self.decay_rate
        if rate <= 0 or elapsed <= 0:
            return
        target = self.target(now)
        if target is not None and target < self.delay:
            self.delay = max(target, self.delay - rate * elapsed)

    def _forget(self, now: float) -> None:
        """Drop the samples older than the window."""
        while self._needed and self._needed[0][0] < now - self.window_s:
            self._needed.popleft()
            self._target = None


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
