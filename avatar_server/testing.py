"""A deterministic stand-in for model.pipeline.AvatarPipeline, for server tests and benchmarks.

It implements the same streaming contract (docs/architecture.md "Pipeline API") and draws frames
that can be checked from the far end of a WebRTC connection:
- a mouth bar whose height follows the RMS of the voiced audio under the frame, and
- a barcode in the top rows holding the frame's audio time (10 ms units, BARCODE_BITS bits).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import numpy as np
from PIL import Image

from avatar_server.runtime import PipelineHandle
from model.data.keypoints import NUM_KEYPOINTS

BARCODE_BITS = 16
BARCODE_UNIT_S = 0.01
BARCODE_ROWS = 8
MOUTH_GAIN = 4.0  # RMS 0.25 -> fully open


@dataclass(frozen=True)
class FakeConfig:
    """The PipelineConfig fields the server reads."""

    fps: int = 25
    chunk_frames: int = 4
    context_frames: int = 2
    lookahead_frames: int = 1
    sample_rate: int = 16000
    height: int = 128
    width: int = 128
    steps: int = 2
    pose_keypoints: int = NUM_KEYPOINTS  # as the real model's pose guider



@dataclass
class FakeChunk:
    stream: "FakeStream"
    frames: np.ndarray        # uint8 [F, H, W, 3]
    audio_time_s: np.ndarray  # float [F]


@dataclass
class FakeLatents:
    """A sampled chunk before decoding (the fake draws its frames while sampling)."""

    stream: "FakeStream"
    chunk: FakeChunk


@dataclass(frozen=True)
class FakeReference:
    image: np.ndarray         # uint8 [H, W, 3] at the output size


@dataclass
class FakeStreamOptions:
    text: str | None = None
    seed: int = 0
    steps: int | None = None
    guidance: dict | None = None


#################################################################################
#                                Frame drawing                                  #
#################################################################################


def mouth_box(height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns of the mouth bar (lower middle of the frame)."""
    return slice(height * 5 // 8, height * 7 // 8), slice(width * 3 // 8, width * 5 // 8)


def barcode_cell(width: int) -> int:
    """Pixel width of one barcode bit."""
    return width // BARCODE_BITS


MOUTH_BORDER = 3  # black frame around the mouth bar: tells generated frames from the idle image


def draw_frame(background: np.ndarray, audio_time_s: float, opening: float) -> np.ndarray:
    """Background + mouth bar (opening in [0, 1]) + barcode of audio_time_s; uint8 [H, W, 3]."""
    frame = background.copy()
    h, w = frame.shape[:2]
    rows, cols = mouth_box(h, w)
    frame[rows, cols] = 0
    inner_top, inner_bottom = rows.start + MOUTH_BORDER, rows.stop - MOUTH_BORDER
    bar = int(round(np.clip(opening, 0.0, 1.0) * (inner_bottom - inner_top)))
    if bar:
        frame[inner_bottom - bar:inner_bottom, cols.start + MOUTH_BORDER:cols.stop - MOUTH_BORDER] = 255
    code = int(round(audio_time_s / BARCODE_UNIT_S)) % (1 << BARCODE_BITS)
    cell = barcode_cell(w)
    for bit in range(BARCODE_BITS):
        frame[:BARCODE_ROWS, bit * cell:(bit + 1) * cell] = 255 if (code >> bit) & 1 else 0
    return frame


def read_barcode(frame: np.ndarray) -> float:
    """Audio time encoded by draw_frame (inverse, robust to lossy coding)."""
    cell = barcode_cell(frame.shape[1])
    gray = frame[1:BARCODE_ROWS - 1].mean(axis=(0, 2))  # [W]
    code = 0
    for bit in range(BARCODE_BITS):
        if gray[bit * cell + 1:(bit + 1) * cell - 1].mean() > 128:
            code |= 1 << bit
    return code * BARCODE_UNIT_S


def read_mouth(frame: np.ndarray) -> float:
    """Mouth opening in [0, 1] drawn by draw_frame; 0 for a frame without the mouth box (idle image)."""
    rows, cols = mouth_box(*frame.shape[:2])
    box = frame[rows, cols].astype(np.float32)
    if box[:MOUTH_BORDER - 1].mean() > 64:  # no dark frame: not drawn by the fake generator
        return 0.0
    inner = box[MOUTH_BORDER:-MOUTH_BORDER, MOUTH_BORDER:-MOUTH_BORDER]
    return float(inner.mean() / 255.0)


#################################################################################
#                                 Fake pipeline                                 #
#################################################################################


class FakeStream:
    """Per-session state: pending audio + voiced mask, frame clock."""

    def __init__(self, pipe: "FakePipeline", reference: FakeReference, options: FakeStreamOptions) -> None:
        self.pipe = pipe
        self.reference = reference
        self.options = options
        self.text = options.text
        self.pose: np.ndarray | None = None
        self.pending = np.zeros(0, np.float32)
        self.voiced = np.zeros(0, bool)
        self.next_frame = 0           # index of the next frame to generate
        self.closed = False

    def push_audio(self, pcm: np.ndarray, voiced: bool = True) -> None:
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        self.pending = np.concatenate([self.pending, pcm])
        self.voiced = np.concatenate([self.voiced, np.full(pcm.size, bool(voiced))])

    def clear_buffer(self) -> None:
        """Drop pending audio; audio pushed next drives the next frame (as AvatarStream does)."""
        self.pending, self.voiced = np.zeros(0, np.float32), np.zeros(0, bool)

    def set_text(self, text: str | None) -> None:
        self.text = text

    def set_pose(self, keypoints: np.ndarray | None) -> None:
        self.pose = keypoints

    def ready(self) -> bool:
        cfg = self.pipe.config
        return self.pending.size >= (cfg.chunk_frames + cfg.lookahead_frames) * self.pipe.samples_per_frame

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pending = np.zeros(0, np.float32)
            self.pipe.close_stream(self)

    def take_chunk(self) -> FakeChunk:
        """Consume chunk_frames frames of audio and draw them."""
        cfg, spf = self.pipe.config, self.pipe.samples_per_frame
        frames, times = [], []
        for i in range(cfg.chunk_frames):
            window = self.pending[i * spf:(i + 1) * spf] * self.voiced[i * spf:(i + 1) * spf]
            rms = float(np.sqrt(np.mean(window ** 2))) if window.size else 0.0
            t = (self.next_frame + i) / cfg.fps
            frames.append(draw_frame(self.reference.image, t, rms * MOUTH_GAIN))
            times.append(t)
        n = cfg.chunk_frames * spf
        self.pending, self.voiced = self.pending[n:], self.voiced[n:]
        self.next_frame += cfg.chunk_frames
        return FakeChunk(self, np.stack(frames), np.asarray(times))


@dataclass
class FakePipeline:
    """Same interface as AvatarPipeline; compute is simulated by `sleep`: `sample_cost_s` + steps x `step_cost_s`
    per sample call, `decode_cost_s` per decode call (tests pass a virtual clock's advance as `sleep`)."""

    config: FakeConfig = field(default_factory=FakeConfig)
    step_cost_s: float = 0.0
    sample_cost_s: float = 0.0
    decode_cost_s: float = 0.0
    sleep: Callable[[float], None] = time.sleep
    device: str = "cpu"
    calls: list[tuple[int, int]] = field(default_factory=list)  # (batch size, steps) per sample call
    open_streams: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def samples_per_frame(self) -> int:
        return self.config.sample_rate // self.config.fps

    def encode_reference(self, image: Image.Image | np.ndarray, mouth: object = None) -> FakeReference:
        """The reference resized to the output size (the fake draws its own mouth bar: `mouth` is not used)."""
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        resized = image.convert("RGB").resize((self.config.width, self.config.height), Image.Resampling.BILINEAR)
        return FakeReference(np.asarray(resized, np.uint8))

    def open_stream(self, reference: FakeReference, options: FakeStreamOptions | None = None) -> FakeStream:
        with self._lock:
            self.open_streams += 1
        return FakeStream(self, reference, options or FakeStreamOptions())

    def close_stream(self, stream: FakeStream) -> None:
        with self._lock:
            self.open_streams -= 1

    def sample(self, streams: list[FakeStream], steps: int | None = None) -> list[FakeLatents]:
        steps = steps or self.config.steps
        self.calls.append((len(streams), steps))
        cost = self.sample_cost_s + self.step_cost_s * steps
        if cost:
            self.sleep(cost)
        return [FakeLatents(stream, stream.take_chunk()) for stream in streams if stream.ready()]

    def decode(self, latents: list[FakeLatents]) -> list[FakeChunk]:
        if self.decode_cost_s:
            self.sleep(self.decode_cost_s)
        return [latent.chunk for latent in latents]

    def generate(self, streams: list[FakeStream], steps: int | None = None) -> list[FakeChunk]:
        return self.decode(self.sample(streams, steps))


def fake_pipeline(step_cost_s: float = 0.0, **config: Any) -> PipelineHandle:
    """The deterministic test generator behind the same handle as runtime.load_pipeline's."""
    pipe = FakePipeline(config=FakeConfig(**config), step_cost_s=step_cost_s)
    return PipelineHandle(pipe=pipe, make_options=FakeStreamOptions, source="fake", device="cpu",
                          pose_keypoints=pipe.config.pose_keypoints)


#################################################################################
#                            In-process server runner                           #
#################################################################################


@contextlib.asynccontextmanager
async def running_server(app: Any, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free port of the current event loop; yields the base URL.

    The app's own settings (app.state.server.settings) shape uvicorn as `omnilive serve` does; log level
    warning unless those settings ask for more.
    """
    from avatar_server.http import start_uvicorn, uvicorn_config

    settings = app.state.server.settings
    level = settings.log_level if settings.log_level in ("debug", "info") else "warning"
    config = uvicorn_config(app, settings, host=host, port=0, log_level=level, loop="none", timeout_graceful_shutdown=5)
    server, task, port = await start_uvicorn(config)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task


TEST_CONFIG = "configs/server/test.yaml"


@contextlib.asynccontextmanager
async def fake_server(step_cost_s: float = 0.0, handle: Any = None, **overrides: Any) -> AsyncIterator[tuple[str, Any]]:
    """A server on the fake generator (or `handle`) with configs/server/test.yaml + overrides; yields (url, state)."""
    from avatar_server.app import create_app
    from avatar_server.settings import load_settings

    settings = load_settings(TEST_CONFIG, environ={}, **overrides)
    app = create_app(settings, handle or fake_pipeline(step_cost_s))
    async with running_server(app) as url:
        yield url, app.state.server


#################################################################################
#                         Microphone over loopback WebRTC                       #
#################################################################################


async def microphone_pair(configure: Callable[[Any], None], timeout_s: float = 10.0) -> tuple[Any, Any, Any]:
    """Two aiortc peers (no ICE servers: the host's own candidates) with a looped silent microphone (20 ms Opus
    packets) from the first to the second; `configure` gets the receiving RTCRtpReceiver before its first packet.
    Returns (sender, receiver, the received track); the caller closes both peers."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    from avatar_server.peer import MicTrack

    sender, receiver = RTCPeerConnection(RTCConfiguration(iceServers=[])), RTCPeerConnection(RTCConfiguration([]))
    got_track: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @receiver.on("track")
    def _track(track: Any) -> None:
        configure(next(t for t in receiver.getTransceivers() if t.receiver.track is track).receiver)
        got_track.set_result(None)

    sender.addTrack(MicTrack(np.zeros(16000, np.float32), loop=True))
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)
    await asyncio.wait_for(got_track, timeout_s)
    return sender, receiver, receiver.getTransceivers()[0].receiver.track
