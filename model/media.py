"""Media files: read and validate reference images, audio and pose files; write H.264 + AAC mp4."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from model.errors import InputError

logger = logging.getLogger(__name__)

AAC_FRAME_SAMPLES = 1024   # samples per AAC frame
AUDIO_BITRATE = 128_000
VIDEO_CRF = "20"


#################################################################################
#                                    Reading                                    #
#################################################################################

def _existing_file(path: str | Path, what: str) -> Path:
    """The path as a Path, or InputError when it is missing or not a regular file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} path is not a file: {path}")
    return path


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file into RGB; InputError when missing or not a decodable image."""
    path = _existing_file(path, "image")
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(f"cannot decode image {path}: {error}") from error
    if rgb.width < 1 or rgb.height < 1:
        raise InputError(f"image {path} is empty")
    return rgb


def _cover(source: tuple[int, int], height: int, width: int) -> tuple[tuple[int, int], int, int]:
    """cover_crop's geometry for a source (width, height): the resized size (w, h) and the crop's left, top."""
    scale = max(height / source[1], width / source[0])
    size = (max(width, round(source[0] * scale)), max(height, round(source[1] * scale)))
    return size, (size[0] - width) // 2, (size[1] - height) // 2


def cover_crop(image: Image.Image, height: int, width: int) -> np.ndarray:
    """Resize so the image covers height x width, then center-crop -> uint8 [height, width, 3]."""
    size, left, top = _cover(image.size, height, width)
    resized = image.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(resized.crop((left, top, left + width, top + height)), dtype=np.uint8).copy()


def cover_crop_place(x: float, y: float, length: float, source: tuple[int, int], height: int,
                     width: int) -> tuple[float, float, float]:
    """A point (x, y) and a horizontal length, in [0, 1] fractions of a source image (width, height), -> the
    same in fractions of its cover_crop to height x width (the point may fall outside [0, 1])."""
    size, left, top = _cover(source, height, width)
    return (x * size[0] - left) / width, (y * size[1] - top) / height, length * size[0] / width


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode the first audio stream of any container as float32 mono at `sample_rate`; InputError if none."""
    path = _existing_file(path, "audio")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as error:
        raise InputError(f"cannot read audio from {path}: not an audio or video file ({error})") from error
    with container:
        if not container.streams.audio:
            raise InputError(f"{path} has no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        pieces: list[np.ndarray] = []
        try:
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
        except (av.error.FFmpegError, ValueError) as error:
            raise InputError(f"cannot decode audio in {path}: {error}") from error
    samples = np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)
    if samples.size == 0:
        raise InputError(f"audio in {path} is empty (0 samples)")
    if not np.isfinite(samples).all():
        raise InputError(f"audio in {path} has non-finite samples")
    return samples


def load_pose(path: str | Path, num_keypoints: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a keypoints.npz (xy [T, K, 2] in [0, 1], NaN = missing; visibility [T, K]); InputError if malformed."""
    path = _existing_file(path, "pose")
    try:
        with np.load(path) as data:
            xy = np.asarray(data["xy"], dtype=np.float32)
            visibility = np.asarray(data["visibility"], dtype=np.float32) if "visibility" in data else None
    except KeyError as error:
        raise InputError(f"pose file {path} has no 'xy' array") from error
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read pose file {path} (expected .npz with xy [T, K, 2]): {error}") from error
    if xy.ndim != 3 or xy.shape[1:] != (num_keypoints, 2) or xy.shape[0] == 0:
        raise InputError(f"pose xy in {path} must be [T, {num_keypoints}, 2], got {list(xy.shape)}")
    if visibility is None:
        visibility = np.ones(xy.shape[:2], np.float32)
    if visibility.shape != xy.shape[:2]:
        raise InputError(f"pose visibility in {path} must be [T, {num_keypoints}], got {list(visibility.shape)}")
    return xy, visibility


#################################################################################
#                                    Writing                                    #
#################################################################################

def check_writable(path: str | Path) -> Path:
    """Fail early (InputError) when `path` cannot be created: missing folder, no permission, a folder."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"output path is a folder: {path}")
    if not parent.is_dir():
        raise InputError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"output path is not writable: {path}")
    return path


class Mp4Writer:
    """H.264 + AAC mp4 written batch by batch of frames; the audio is interleaved and cut (or padded with
    silence) to the video's duration, so both tracks end together. A failed write removes the file."""

    def __init__(self, path: str | Path, fps: int, audio: np.ndarray, sample_rate: int):
        self.path = check_writable(path)
        self.fps, self.sample_rate = fps, sample_rate
        self.audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        self.frames_written = 0
        self._samples_written = 0
        try:
            self._container = av.open(str(self.path), mode="w", format="mp4")
        except (av.error.FFmpegError, OSError) as error:
            raise InputError(f"cannot write {self.path}: {error}") from error
        self._video = self._sound = None

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._container.close()
            self.path.unlink(missing_ok=True)

    def _open_streams(self, height: int, width: int) -> None:
        """Add the video and audio streams once the frame size is known (before the header is written)."""
        self._video = self._container.add_stream("libx264", rate=self.fps)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.options = {"crf": VIDEO_CRF, "preset": "veryfast"}
        self._sound = self._container.add_stream("aac", rate=self.sample_rate)
        self._sound.layout = "mono"
        self._sound.bit_rate = AUDIO_BITRATE

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 frames [n, H, W, 3] and the audio they cover."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames [n, H, W, 3], got {frames.dtype} {frames.shape}")
        if self._video is None:
            self._open_streams(frames.shape[1], frames.shape[2])
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self.frames_written
            frame.time_base = Fraction(1, self.fps)
            self._container.mux(self._video.encode(frame))
            self.frames_written += 1
            self._mux_audio(final=False)  # interleave: audio up to the end of this frame

    def close(self) -> None:
        """Flush both encoders and finish the file."""
        if self._video is None:
            self._container.close()
            self.path.unlink(missing_ok=True)
            raise ValueError("no frames were written")
        self._mux_audio(final=True)
        self._container.mux(self._video.encode(None))
        self._container.mux(self._sound.encode(None))
        self._container.close()
        logger.info("wrote %s: %d frames at %d fps with audio", self.path, self.frames_written, self.fps)

    def _mux_audio(self, final: bool) -> None:
        """Encode whole AAC frames up to the end of the written video (the short tail only when final)."""
        stop = self.frames_written * self.sample_rate // self.fps
        while stop - self._samples_written >= AAC_FRAME_SAMPLES or (final and self._samples_written < stop):
            start = self._samples_written
            size = min(AAC_FRAME_SAMPLES, stop - start)
            piece = np.zeros(size, np.float32)
            available = self.audio[start : start + size]
            piece[: available.size] = available
            frame = av.AudioFrame.from_ndarray(piece.reshape(1, -1), format="fltp", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = start
            frame.time_base = Fraction(1, self.sample_rate)
            self._container.mux(self._sound.encode(frame))
            self._samples_written += size

