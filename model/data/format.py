"""Dataset format: one folder per clip (video, audio, keypoints, meta) plus index.json.

```
DATASET/index.json               {"version": 1, "clips": [IndexEntry, ...]}
DATASET/clips/<id>/video.mp4     25 fps H.264 (yuv420p)
DATASET/clips/<id>/audio.wav     16 kHz mono PCM16 (absent when the source had no audio)
DATASET/clips/<id>/keypoints.npz xy [T,K,2] float32 in [0,1], visibility [T,K] float32,
                                 mouth_open [T] float32 (NaN where unknown); absent without pose
DATASET/clips/<id>/meta.json     ClipMeta
```
Every file is written deterministically (no timestamps), so the same content gives the same bytes.
See docs/dataset.md.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from model.data.keypoints import NUM_KEYPOINTS
from model.errors import InputError

FORMAT_VERSION = 1
FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
SPLITS: tuple[str, ...] = ("train", "val", "test")
CONDITIONS: tuple[str, ...] = ("text", "reference", "audio", "pose")

ASPECTS: dict[str, tuple[int, int]] = {"1:1": (1, 1), "3:4": (3, 4), "9:16": (9, 16), "16:9": (16, 9)}

VIDEO_FILE = "video.mp4"
AUDIO_FILE = "audio.wav"
KEYPOINTS_FILE = "keypoints.npz"
META_FILE = "meta.json"
INDEX_FILE = "index.json"
CLIPS_DIR = "clips"

def frame_size(aspect: str, short_side: int, multiple: int = 16) -> tuple[int, int]:
    """(width, height) of an aspect bucket "W:H", both multiples of `multiple`."""
    if aspect not in ASPECTS:
        raise InputError(f"unknown aspect {aspect!r}; expected one of {sorted(ASPECTS)}")
    aw, ah = ASPECTS[aspect]
    long_side = short_side * max(aw, ah) / min(aw, ah)
    short = max(multiple, round(short_side / multiple) * multiple)
    long = max(multiple, round(long_side / multiple) * multiple)
    return (short, long) if aw <= ah else (long, short)


# ------------------------------------------------------------------------------------------------
# Metadata
# ------------------------------------------------------------------------------------------------


class QualityFlags(BaseModel):
    """What a clip can be trained on; `conditions` is what the trainer reads."""

    audio_present: bool
    has_speech: bool
    speech_ratio: float = Field(ge=0.0, le=1.0, description="fraction of 32 ms windows with speech")
    motion: float = Field(ge=0.0, description="mean absolute frame difference (0..1 pixel scale)")
    has_pose: bool
    conditions: list[str] = Field(description="conditions this clip may train, subset of CONDITIONS")


class ClipMeta(BaseModel):
    """meta.json of one clip."""

    id: str
    caption: str
    identity: str
    framing: Literal["face", "portrait", "half_body", "full_body", "unknown"]
    aspect: str = Field(description='aspect bucket "W:H", e.g. "9:16"')
    fps: int
    width: int
    height: int
    frames: int
    sample_rate: int = SAMPLE_RATE
    duration_s: float
    source: str = Field(description='"studio" or "prep:<input file name>"')
    split: Literal["train", "val", "test"]
    flags: QualityFlags
    extra: dict = Field(default_factory=dict, description="source-specific details (style, voice, ...)")


class IndexEntry(BaseModel):
    """One row of index.json: enough to select clips without opening their folders."""

    id: str
    split: Literal["train", "val", "test"]
    identity: str
    framing: str
    aspect: str
    width: int
    height: int
    frames: int
    caption: str
    source: str
    conditions: list[str]


class DatasetIndex(BaseModel):
    """index.json of a dataset."""

    version: int = FORMAT_VERSION
    clips: list[IndexEntry] = Field(default_factory=list)

    def split(self, name: str, framings: Sequence[str] | None = None) -> list[IndexEntry]:
        """Entries of one split (only those of the given framings, when given)."""
        return [c for c in self.clips if c.split == name and (framings is None or c.framing in framings)]


def index_entry(meta: ClipMeta) -> IndexEntry:
    """The index row of a clip."""
    return IndexEntry(
        id=meta.id, split=meta.split, identity=meta.identity, framing=meta.framing, aspect=meta.aspect,
        width=meta.width, height=meta.height, frames=meta.frames, caption=meta.caption,
        source=meta.source, conditions=list(meta.flags.conditions),
    )


# ------------------------------------------------------------------------------------------------
# Deterministic file writers
# ------------------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    """Write bytes through a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def write_meta(clip_dir: Path, meta: ClipMeta) -> None:
    """Write meta.json (last file of a clip: its presence marks the clip complete)."""
    _write_atomic(clip_dir / META_FILE, _json_bytes(meta.model_dump(mode="json")))


def write_index(root: Path, index: DatasetIndex) -> None:
    """Write index.json with clips sorted by id."""
    index = DatasetIndex(version=index.version, clips=sorted(index.clips, key=lambda c: c.id))
    _write_atomic(Path(root) / INDEX_FILE, _json_bytes(index.model_dump(mode="json")))


def write_audio(path: Path, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float mono audio in [-1, 1] as PCM16 WAV."""
    pcm16 = (np.clip(np.asarray(pcm, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
    data = pcm16.tobytes()
    header = b"".join([
        b"RIFF", (36 + len(data)).to_bytes(4, "little"), b"WAVE",
        b"fmt ", (16).to_bytes(4, "little"), (1).to_bytes(2, "little"), (1).to_bytes(2, "little"),
        sample_rate.to_bytes(4, "little"), (sample_rate * 2).to_bytes(4, "little"),
        (2).to_bytes(2, "little"), (16).to_bytes(2, "little"),
        b"data", len(data).to_bytes(4, "little"),
    ])
    _write_atomic(Path(path), header + data)


@dataclass
class Keypoints:
    """Per-frame pose ground truth of a clip."""

    xy: np.ndarray          # [T, K, 2] float32 in [0, 1]
    visibility: np.ndarray  # [T, K] float32 in {0, 1}
    mouth_open: np.ndarray  # [T] float32 in [0, 1], NaN where unknown

    def __post_init__(self) -> None:
        t = self.xy.shape[0]
        if self.xy.shape != (t, NUM_KEYPOINTS, 2) or self.visibility.shape != (t, NUM_KEYPOINTS):
            raise InputError(f"keypoints must be [T,{NUM_KEYPOINTS},2] and [T,{NUM_KEYPOINTS}], "
                             f"got {self.xy.shape} and {self.visibility.shape}")
        if self.mouth_open.shape != (t,):
            raise InputError(f"mouth_open must be [T], got {self.mouth_open.shape}")


def write_keypoints(path: Path, keypoints: Keypoints) -> None:
    """Write keypoints.npz without timestamps (byte-identical for identical arrays)."""
    arrays = {
        "xy": keypoints.xy.astype(np.float32),
        "visibility": keypoints.visibility.astype(np.float32),
        "mouth_open": keypoints.mouth_open.astype(np.float32),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    _write_atomic(Path(path), buffer.getvalue())


class VideoWriter:
    """Deterministic H.264 writer: libx264, one thread, fixed options, yuv420p."""

    def __init__(self, path: Path, width: int, height: int, fps: int = FPS, crf: int = 18) -> None:
        if width % 2 or height % 2:
            raise InputError(f"video size must be even, got {width}x{height}")
        self._path = Path(path)
        self._tmp = self._path.with_name(self._path.name + ".tmp.mp4")
        import av  # here, not at the top: reading a dataset's index and keypoints needs no PyAV

        self._container = av.open(str(self._tmp), "w", format="mp4")
        self._stream = self._container.add_stream(
            "libx264", rate=fps, options={"crf": str(crf), "preset": "veryfast", "threads": "1"})
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.codec_context.thread_count = 1
        self._stream.codec_context.time_base = Fraction(1, fps)
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        """Encode one uint8 [H, W, 3] RGB frame."""
        import av

        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.frames
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and move the file into place."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self._path)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._container.close()
            self._tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------
# Readers
# ------------------------------------------------------------------------------------------------


def read_index(root: Path) -> DatasetIndex:
    """Load index.json of a dataset folder."""
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise InputError(f"{root} is not a dataset: {INDEX_FILE} is missing")
    return DatasetIndex.model_validate_json(path.read_text())


def clip_dir(root: Path, clip_id: str) -> Path:
    """Folder of one clip."""
    return Path(root) / CLIPS_DIR / clip_id


def read_meta(clip_path: Path) -> ClipMeta:
    """Load meta.json of a clip folder."""
    return ClipMeta.model_validate_json((Path(clip_path) / META_FILE).read_text())


def scan_clip_metas(root: Path) -> dict[str, ClipMeta]:
    """Complete clips in a dataset folder by id (meta.json is written last, so it marks completion)."""
    metas: dict[str, ClipMeta] = {}
    clips = Path(root) / CLIPS_DIR
    if clips.is_dir():
        for meta_file in sorted(clips.glob(f"*/{META_FILE}")):
            meta = read_meta(meta_file.parent)
            metas[meta.id] = meta
    return metas


def rebuild_index(root: Path, metas: dict[str, ClipMeta] | None = None) -> DatasetIndex:
    """Write index.json from the given metas (default: every complete clip folder) and return it."""
    metas = scan_clip_metas(root) if metas is None else metas
    index = DatasetIndex(clips=[index_entry(m) for m in metas.values()])
    write_index(root, index)
    return index


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Read a PCM16 mono WAV as float32 in [-1, 1] and its sample rate (tolerates streamed headers)."""
    data = Path(path).read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InputError(f"{path} is not a WAV file")
    pos, sample_rate, channels, bits = 12, 0, 1, 16
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if tag == b"fmt ":
            channels = int.from_bytes(data[body + 2:body + 4], "little")
            sample_rate = int.from_bytes(data[body + 4:body + 8], "little")
            bits = int.from_bytes(data[body + 14:body + 16], "little")
        elif tag == b"data":
            end = min(len(data), body + size)
            end -= (end - body) % (2 * channels)
            if bits != 16:
                raise InputError(f"{path}: only PCM16 WAV is supported, got {bits} bits")
            pcm = np.frombuffer(data[body:end], dtype="<i2").astype(np.float32) / 32768.0
            return pcm.reshape(-1, channels).mean(axis=1), sample_rate
        pos = body + size + (size & 1)
    raise InputError(f"{path} has no audio data")


def read_keypoints(path: Path) -> Keypoints:
    """Load keypoints.npz."""
    with np.load(path) as arrays:
        return Keypoints(xy=arrays["xy"], visibility=arrays["visibility"], mouth_open=arrays["mouth_open"])


def read_video(path: Path) -> np.ndarray:
    """Decode a clip video to uint8 [T, H, W, 3] RGB (ModuleNotFoundError where PyAV is not installed)."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)


@dataclass
class Clip:
    """A clip loaded into memory."""

    meta: ClipMeta
    frames: np.ndarray              # uint8 [T, H, W, 3]
    audio: np.ndarray | None        # float32 [T * SAMPLES_PER_FRAME] at 16 kHz, None without audio
    keypoints: Keypoints | None


def load_clip(root: Path, clip_id: str) -> Clip:
    """Load one clip of a dataset: frames, audio, keypoints and meta."""
    path = clip_dir(root, clip_id)
    meta = read_meta(path)
    audio = read_audio(path / AUDIO_FILE)[0] if (path / AUDIO_FILE).is_file() else None
    keypoints = read_keypoints(path / KEYPOINTS_FILE) if (path / KEYPOINTS_FILE).is_file() else None
    return Clip(meta=meta, frames=read_video(path / VIDEO_FILE), audio=audio, keypoints=keypoints)


def split_for_identity(identity: str, seed: int, val: float = 0.1, test: float = 0.1) -> str:
    """Deterministic split of an identity, so that splits never share one."""
    rng = np.random.default_rng([seed, *identity.encode()])
    u = rng.random()
    return "test" if u < test else "val" if u < test + val else "train"
