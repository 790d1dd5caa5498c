"""A programmatic client: an aiortc peer that sends a microphone signal and records what comes back.

Used by `omnilive bench serve` and the loopback tests. Arrival times are taken when the RTP
packets arrive (before the receiver's jitter buffers), so video and audio timing can be compared
the way a browser's lip sync does it.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from avatar_server.aiortc_adapter import tap_rtp

MIC_RATE = 16000
MIC_PTIME_S = 0.020
RTP_WRAP = 1 << 32


class MicTrack(MediaStreamTrack):
    """Plays a float32 16 kHz signal in real time as 20 ms frames, then silence (or loops it)."""

    kind = "audio"

    def __init__(self, signal: np.ndarray, loop: bool = False) -> None:
        super().__init__()
        self.signal = np.asarray(signal, np.float32)
        self.loop = loop
        self.samples = int(MIC_RATE * MIC_PTIME_S)
        self.started: float | None = None
        self._index = 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.started is None:
            self.started = time.monotonic()
        due = self.started + self._index * MIC_PTIME_S
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        start = self._index * self.samples
        if self.loop and self.signal.size:
            idx = (start + np.arange(self.samples)) % self.signal.size
            pcm = self.signal[idx]
        else:
            pcm = np.zeros(self.samples, np.float32)
            piece = self.signal[start:start + self.samples]
            pcm[:piece.size] = piece
        data = (np.clip(pcm, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(data, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = MIC_RATE, start, Fraction(1, MIC_RATE)
        self._index += 1
        return frame


@dataclass
class Received:
    """What one peer got back."""

    video: list[tuple[float, int | None, np.ndarray | None]] = field(default_factory=list)  # (arrival, pts, rgb)
    audio: list[tuple[float, int | None, np.ndarray]] = field(default_factory=list)         # (arrival, pts, pcm [N, C])
    rtp_arrival: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    rtp_origin: dict[str, int] = field(default_factory=dict)

    def packet_arrival(self, kind: str, pts: int) -> float | None:
        """When the first RTP packet of the frame with this (mapped) pts arrived."""
        origin = self.rtp_origin.get(kind)
        if origin is None:
            return None
        return self.rtp_arrival[kind].get((origin + pts) % RTP_WRAP)


class AvatarPeer:
    """One client session against an omnilive server."""

    def __init__(self, base_url: str, *, mic: np.ndarray | None = None, loop_mic: bool = False,
                 keep_images: bool = True, token: str | None = None, options: dict[str, Any] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = MicTrack(mic, loop_mic) if mic is not None else None
        self.keep_images = keep_images
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.options = options or {}
        self.received = Received()
        self.session: dict[str, Any] = {}
        self.started = 0.0
        self.first_frame_s: float | None = None
        self._tasks: list[asyncio.Task] = []

    async def connect(self, http: httpx.AsyncClient) -> httpx.Response:
        """Offer (recvonly video, sendrecv or recvonly audio), POST it, apply the answer."""
        self.pc.addTransceiver("video", direction="recvonly")
        if self.mic is not None:
            self.pc.addTrack(self.mic)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.started = time.monotonic()
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", **self.options}
        response = await http.post(f"{self.base_url}/v1/sessions", json=body, headers=self.headers)
        if response.status_code == 201:
            self.session = response.json()
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.session["sdp"], type="answer"))
        return response

    def _on_track(self, track: MediaStreamTrack) -> None:
        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track)
        self._record_rtp(receiver, track.kind)
        self._tasks.append(asyncio.ensure_future(self._consume(track)))

    def _record_rtp(self, receiver: RTCRtpReceiver, kind: str) -> None:
        arrivals, origins = self.received.rtp_arrival[kind], self.received.rtp_origin

        def record(timestamp: int) -> None:
            origins.setdefault(kind, timestamp)
            arrivals.setdefault(timestamp, time.monotonic())

        tap_rtp(receiver, record)

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if isinstance(frame, VideoFrame):
                    if self.first_frame_s is None:
                        self.first_frame_s = now - self.started
                    image = frame.to_ndarray(format="rgb24") if self.keep_images else None
                    self.received.video.append((now, frame.pts, image))
                elif isinstance(frame, AudioFrame):
                    pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                    self.received.audio.append((now, frame.pts, pcm))
        except MediaStreamError:
            return

    async def wait_connected(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if time.monotonic() > deadline or self.pc.connectionState in ("failed", "closed"):
                raise TimeoutError(f"peer connection is {self.pc.connectionState}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Close the peer connection (the clean way)."""
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def vanish(self) -> None:
        """Stop without telling the server (a crashed browser): sockets closed, no DTLS close."""
        for transceiver in self.pc.getTransceivers():  # ICE closes its sockets and says nothing to the server
            await transceiver.receiver.transport.transport.stop()  # RTCDtlsTransport -> RTCIceTransport
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
