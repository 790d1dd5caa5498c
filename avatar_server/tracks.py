"""Outbound media tracks: paced avatar video and the matching, equally delayed audio.

aiortc's senders call `recv` for the next frame/packet; the tracks pace themselves on the session's Clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from avatar_server.audio import PCM16_SCALE, AudioHistory
from avatar_server.clock import Clock
from avatar_server.playout import FrameQueue, PlayoutClock, TimedFrame
from avatar_server.settings import AUDIO_CATCH_UP

VIDEO_CLOCK_RATE = 90000
AUDIO_PTIME_S = 0.020
AUDIO_REANCHOR_S = 1.0  # audio catches up packet by packet unless it is this late (Opus RTP counts samples)


@dataclass
class TrackCounters:
    """What the tracks did; read by session stats and metrics."""

    frames_sent: int = 0
    frames_generated_sent: int = 0
    frames_held: int = 0
    video_reanchors: int = 0
    audio_resyncs: int = 0
    first_frame_at: float | None = None


#################################################################################
#                                     Video                                     #
#################################################################################


class AvatarVideoTrack(MediaStreamTrack):
    """Sends one frame every 1/fps on a 90 kHz clock; re-anchors instead of bursting when late.

    Each tick shows the generated frame whose audio time is playing now; with none due it repeats
    the last one (a held frame, counted) or the avatar's idle image before the first chunk.
    """

    kind = "video"

    def __init__(self, clock: Clock, playout: PlayoutClock, frames: FrameQueue, history: AudioHistory,
                 idle: np.ndarray, fps: float, size: tuple[int, int], counters: TrackCounters,
                 on_latency: Callable[[float], None]) -> None:
        super().__init__()
        self.clock, self.playout, self.frames, self.history = clock, playout, frames, history
        self.idle = idle
        self.frame_s = 1.0 / fps
        self.width, self.height = size
        self.counters = counters
        self.on_latency = on_latency
        self._anchor: float | None = None
        self.started_at: float | None = None  # the first frame's send time; pts count from it
        self.handed_at: float | None = None  # when the last frame was handed to the sender (its encoder)
        self._index = 0
        self._last_pts = -1
        self._current: TimedFrame | None = None
        self._fade_from: np.ndarray | None = None
        self._fade_frames = 0
        self._fade_index = 0

    def fade_to_idle(self, frames: int) -> None:
        """Barge-in: blend from the frame on screen to the idle image over `frames` frames."""
        self._fade_from = self._current.image if self._current is not None else None
        self._fade_frames, self._fade_index = max(frames, 1), 0
        self._current = None

    def _idle_image(self) -> np.ndarray:
        """The idle image, or the next step of a fade towards it."""
        if self._fade_from is None:
            return self.idle
        self._fade_index += 1
        alpha = min(1.0, self._fade_index / self._fade_frames)
        image = (self._fade_from * (1.0 - alpha) + self.idle * alpha).astype(np.uint8)
        if alpha >= 1.0:
            self._fade_from = None
        return image

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = self.clock.monotonic()
        if self.started_at is None:
            self.started_at = now
        if self._anchor is None:
            self._anchor = now
        due = self._anchor + self._index * self.frame_s
        if due > now:
            await self.clock.sleep(due - now)
        elif now - due > self.frame_s:  # late: restart the schedule from now, never burst
            self._anchor, due = now - self._index * self.frame_s, now
            self.counters.video_reanchors += 1
        self._index += 1

        playing = self.playout.audio_time(due)
        frame = self.frames.take(playing)
        if frame is not None:
            self._current, self._fade_from = frame, None
        elif self._current is not None and self._current.audio_time < playing - self.frames.frame_s:
            self.counters.frames_held += 1
        image = self._current.image if self._current is not None else self._idle_image()

        video = VideoFrame.from_ndarray(image, format="rgb24")
        if (video.width, video.height) != (self.width, self.height):
            video = video.reformat(width=self.width, height=self.height)
        pts = max(self._last_pts + 1, int(round((due - self.started_at) * VIDEO_CLOCK_RATE)))
        video.pts, video.time_base = pts, Fraction(1, VIDEO_CLOCK_RATE)
        self._last_pts = pts

        sent = self.handed_at = self.clock.monotonic()
        self.counters.frames_sent += 1
        if frame is not None:
            self.counters.frames_generated_sent += 1
            if self.counters.first_frame_at is None:
                self.counters.first_frame_at = sent
            arrival = self.history.arrival(int(round(frame.audio_time * self.history.rate)))
            if arrival is not None:
                self.on_latency(sent - arrival)
        return video


#################################################################################
#                                     Audio                                     #
#################################################################################


class AvatarAudioTrack(MediaStreamTrack):
    """The audio pushed to the model, played on the same clock as the video (delayed by its latency).

    A 20 ms packet leaves every 20 ms. Its content is the history at the audio time playing now.
    When the clock's delay shrinks a little (it comes down gradually, also while the avatar speaks) the
    read position falls behind: each packet then takes up to `AUDIO_CATCH_UP` more audio, resampled
    into its 20 ms (played that much faster, no jump over speech), until it caught up. Further behind
    than `tolerance` it jumps forward; when the delay grows it waits with silence. So lips and voice
    stay within `tolerance` of each other.
    """

    kind = "audio"

    def __init__(self, clock: Clock, playout: PlayoutClock, history: AudioHistory, tolerance_s: float,
                 counters: TrackCounters) -> None:
        super().__init__()
        self.clock, self.playout, self.history = clock, playout, history
        self.rate = history.rate
        self.samples = int(round(AUDIO_PTIME_S * self.rate))
        self.tolerance = int(round(tolerance_s * self.rate))
        self.catch_up = int(AUDIO_CATCH_UP * self.samples)  # extra samples a packet may take while behind
        self.counters = counters
        self._anchor: float | None = None
        self.started_at: float | None = None  # the first packet's send time; samples count from it
        self._index = 0
        self._position: int | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = self.clock.monotonic()
        if self._anchor is None:
            self._anchor = self.started_at = now
        due = self._anchor + self._index * AUDIO_PTIME_S
        if due > now:
            await self.clock.sleep(due - now)
        elif now - due > AUDIO_REANCHOR_S:
            self._anchor, due = now - self._index * AUDIO_PTIME_S, now

        target = int(round(self.playout.audio_time(due) * self.rate))
        if self._position is None or self._position < target - self.tolerance:
            if self._position is not None:
                self.counters.audio_resyncs += 1
            self._position = target
        if self._position > target + self.tolerance:
            pcm = np.zeros(self.samples, np.float32)  # the video fell back: wait for it
        else:
            extra = min(max(target - self._position, 0), self.catch_up)
            pcm = self.history.read(self._position, self.samples + extra)
            if extra:  # behind a shrinking delay: this packet's audio a little faster
                pcm = np.interp(np.arange(self.samples) * ((self.samples + extra) / self.samples),
                                np.arange(self.samples + extra), pcm).astype(np.float32)
            self._position += self.samples + extra

        data = np.clip(pcm * PCM16_SCALE, -PCM16_SCALE, PCM16_SCALE - 1).astype(np.int16)
        frame = AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts, frame.time_base = self._index * self.samples, Fraction(1, self.rate)
        self._index += 1
        return frame
