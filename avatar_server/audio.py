"""Audio ingest and buffers: resampling to 16 kHz mono, the input inbox, the pushed-audio history."""

from __future__ import annotations

from collections import deque

import av
import numpy as np

from model.errors import InputError

PCM16_SCALE = 32768.0


#################################################################################
#                                  Resampling                                   #
#################################################################################


class Resampler:
    """Any PyAV audio frame (Opus decodes to 48 kHz stereo s16) -> float32 mono at `rate`."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)

    def frame(self, frame: av.AudioFrame) -> np.ndarray:
        """Resample one decoded frame; returns float32 [N] (N may be 0 while the filter primes)."""
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, np.float32)


class PCM16Decoder:
    """Binary PCM16 little-endian mono at `sample_rate` -> float32 mono at `rate` (stateful)."""

    def __init__(self, sample_rate: int, rate: int) -> None:
        self.sample_rate = sample_rate
        self._pts = 0
        self._resampler = None if sample_rate == rate else Resampler(rate)

    def decode(self, data: bytes) -> np.ndarray:
        """One binary message; InputError on an odd byte count."""
        if len(data) % 2:
            raise InputError(f"PCM16 message has an odd number of bytes ({len(data)})")
        samples = np.frombuffer(data, dtype="<i2")
        if self._resampler is None:
            return samples.astype(np.float32) / PCM16_SCALE
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += samples.size
        return self._resampler.frame(frame)


#################################################################################
#                                    Buffers                                    #
#################################################################################


class Inbox:
    """Input audio waiting to be fed to the stream at real-time pace: each part with when it arrived and whether it
    came from a live source (a microphone: real time, never ahead) or was pushed (an agent's audio socket)."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self._parts: deque[tuple[np.ndarray, float, bool]] = deque()
        self.size = 0

    def put(self, pcm: np.ndarray, arrived: float = 0.0, live: bool = False) -> bool:
        """Append audio that arrived at clock time `arrived`; False (nothing kept) when it would exceed the limit."""
        if self.size + pcm.size > self.max_samples:
            return False
        if pcm.size:
            self._parts.append((pcm, arrived, live))
            self.size += pcm.size
        return True

    @property
    def oldest(self) -> float | None:
        """When the audio at the front arrived (None when empty)."""
        return self._parts[0][1] if self._parts else None

    @property
    def live(self) -> bool:
        """The audio at the front came from a live source."""
        return bool(self._parts) and self._parts[0][2]

    def take(self, n: int) -> np.ndarray:
        """Up to n samples from the front."""
        out, need = [], min(n, self.size)
        while need:
            part, arrived, live = self._parts[0]
            if part.size <= need:
                out.append(self._parts.popleft()[0])
                need -= part.size
            else:
                out.append(part[:need])
                self._parts[0] = (part[need:], arrived, live)
                need = 0
        pcm = np.concatenate(out) if out else np.zeros(0, np.float32)
        self.size -= pcm.size
        return pcm

    def drop_quiet(self, samples: int, rms: float) -> int:
        """Drop whole live parts from the front while each is quieter than `rms`, up to `samples`; how many dropped."""
        dropped = 0
        while self._parts and self._parts[0][2] and dropped + self._parts[0][0].size <= samples:
            part = self._parts[0][0]
            if float(np.sqrt(np.mean(np.square(part)))) >= rms:
                break
            self._parts.popleft()
            dropped += part.size
        self.size -= dropped
        return dropped

    def clear(self) -> None:
        self._parts.clear()
        self.size = 0


class AudioHistory:
    """Every sample pushed to the stream, by stream sample index, kept for the outbound audio track.

    Also remembers when each block of samples was pushed (its arrival at the model), for the
    audio-arrival -> frame-sent latency.
    """

    def __init__(self, rate: int, seconds: float, block: int) -> None:
        self.rate = rate
        self.block = block
        self.capacity = int(rate * seconds) // block * block
        self._pcm = np.zeros(self.capacity, np.float32)
        self._arrival = np.full(self.capacity // block, np.nan)
        self.end = 0  # stream samples written so far

    def write(self, pcm: np.ndarray, arrival: float) -> None:
        """Append pushed audio; blocks that start inside it are stamped with `arrival`."""
        start = self.end
        if pcm.size:
            self._pcm[(start + np.arange(pcm.size)) % self.capacity] = pcm
            first_new = -(-start // self.block)                   # first block starting at >= start
            last = (start + pcm.size - 1) // self.block
            if last >= first_new:
                self._arrival[np.arange(first_new, last + 1) % self._arrival.size] = arrival
        self.end += pcm.size

    def read(self, start: int, n: int) -> np.ndarray:
        """Samples [start, start + n); zeros where never written or already overwritten."""
        out = np.zeros(n, np.float32)
        lo, hi = max(start, self.end - self.capacity, 0), min(start + n, self.end)
        if hi > lo:
            out[lo - start:hi - start] = self._pcm[np.arange(lo, hi) % self.capacity]
        return out

    def arrival(self, sample: int) -> float | None:
        """When the block holding `sample` was pushed (None when unknown)."""
        if not self.end - self.capacity <= sample < self.end or sample < 0:
            return None
        value = self._arrival[(sample // self.block) % self._arrival.size]
        return None if np.isnan(value) else float(value)

    def silence_from(self, start: int) -> None:
        """Zero everything written from `start` on (barge-in: speech not yet played is dropped)."""
        lo = max(start, self.end - self.capacity, 0)
        if self.end > lo:
            self._pcm[np.arange(lo, self.end) % self.capacity] = 0.0
