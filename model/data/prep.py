"""Real videos -> dataset format: decode (PyAV), 25 fps, 16 kHz mono, aspect buckets, quality flags.

Each input file becomes one or more clips (segments of at most `segment_seconds`). A file that
cannot be used is skipped with a reason in the report; it never stops the run. Pose comes from a
pluggable extractor (`module:callable`, frames uint8 [T,H,W,3] -> Keypoints or None); without one,
clips carry no keypoints and train every condition except pose.
"""

from __future__ import annotations

import functools
import glob
import importlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field

from model.data import format as fmt
from model.errors import InputError

logger = logging.getLogger(__name__)

REPORT_FILE = "prep-report.json"
PoseExtractor = Callable[[np.ndarray], "fmt.Keypoints | None"]


class PrepConfig(BaseModel):
    """Settings of real-video preparation."""

    short_side: int = Field(256, ge=64, le=2048)
    size_multiple: int = 16
    segment_seconds: float = Field(10.0, ge=1.0, description="longer videos are cut into clips of this length")
    min_seconds: float = Field(1.0, gt=0.0, description="shorter inputs (or last segments) are dropped")
    vad_threshold: float = Field(0.5, description="silero-vad probability above which a 32 ms window is speech")
    min_speech_ratio: float = Field(0.1, description="clips with less speech do not train the audio condition")
    min_motion: float = Field(0.002, description="clips that move less (a still image) do not train audio")
    crf: int = 18
    split_seed: int = 0


# ------------------------------------------------------------------------------------------------
# Pose extractors
# ------------------------------------------------------------------------------------------------


def load_pose_extractor(spec: str | None) -> PoseExtractor | None:
    """Import `package.module:callable` (a function, or a class instantiated without arguments)."""
    if not spec:
        return None
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InputError(f"pose extractor must look like 'package.module:callable', got {spec!r}")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise InputError(f"cannot load pose extractor {spec!r}: {error}") from error
    return target() if isinstance(target, type) else target


# ------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------


def aspect_bucket(width: int, height: int) -> str:
    """The aspect bucket closest (in log ratio) to a frame size."""
    ratio = np.log(width / height)
    return min(fmt.ASPECTS, key=lambda a: abs(np.log(fmt.ASPECTS[a][0] / fmt.ASPECTS[a][1]) - ratio))


def crop_resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop an RGB frame to width:height and resize it to exactly that size."""
    h, w = frame.shape[:2]
    target = width / height
    if w / h > target:
        cw, ch = int(round(h * target)), h
    else:
        cw, ch = w, int(round(w / target))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    image = Image.fromarray(frame[y0:y0 + ch, x0:x0 + cw])
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0))


def decode_audio(path: Path) -> np.ndarray | None:
    """The first audio stream as float32 mono 16 kHz, or None when the file has none."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=fmt.SAMPLE_RATE)
        chunks = []
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def frames_at_fps(path: Path, fps: int) -> Iterator[np.ndarray]:
    """RGB frames resampled to a constant `fps` (each output time takes the latest source frame)."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise InputError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_index, last, origin = 0, None, None
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else next_index / fps
            origin = t if origin is None else origin
            t -= origin
            image = frame.to_ndarray(format="rgb24")
            while last is not None and next_index / fps < t - 0.5 / fps:
                yield last
                next_index += 1
            last = image
            if next_index / fps <= t + 0.5 / fps:
                yield image
                next_index += 1
        if last is None:
            raise InputError("no decodable video frames")


# ------------------------------------------------------------------------------------------------
# Quality flags
# ------------------------------------------------------------------------------------------------


@functools.cache
def _silero_model() -> torch.nn.Module:
    """The packaged silero-vad model, loaded once per process (its state is reset per clip)."""
    threads = torch.get_num_threads()
    from silero_vad import load_silero_vad   # sets torch threads to 1 on import

    torch.set_num_threads(threads)
    return load_silero_vad()


class SpeechDetector:
    """silero-vad over 512-sample windows at 16 kHz (one model, state reset per clip)."""

    WINDOW = 512

    def __init__(self) -> None:
        self.model = _silero_model()

    @torch.inference_mode()
    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Speech probability of each full 32 ms window."""
        self.model.reset_states()
        n = len(audio) // self.WINDOW
        probs = np.zeros(n, dtype=np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(audio[: n * self.WINDOW], dtype=np.float32))
        for i in range(n):
            probs[i] = float(self.model(tensor[i * self.WINDOW:(i + 1) * self.WINDOW], fmt.SAMPLE_RATE))
        self.model.reset_states()
        return probs


def quality_flags(audio: np.ndarray | None, motion: float, has_pose: bool, detector: SpeechDetector | None,
                  config: PrepConfig) -> fmt.QualityFlags:
    """Flags and the conditions a clip may train (weaker conditions always; audio/pose only when clean)."""
    speech_ratio = 0.0
    if audio is not None and detector is not None and len(audio) >= SpeechDetector.WINDOW:
        speech_ratio = float(np.mean(detector.probabilities(audio) > config.vad_threshold))
    has_speech = speech_ratio >= config.min_speech_ratio
    conditions = ["text", "reference"]
    if audio is not None and has_speech and motion >= config.min_motion:
        conditions.append("audio")
    if has_pose:
        conditions.append("pose")
    return fmt.QualityFlags(audio_present=audio is not None, has_speech=has_speech,
                            speech_ratio=round(speech_ratio, 4), motion=round(motion, 6), has_pose=has_pose,
                            conditions=conditions)


# ------------------------------------------------------------------------------------------------
# One file
# ------------------------------------------------------------------------------------------------


@dataclass
class _Segment:
    """A clip being written."""

    clip_id: str
    path: Path
    writer: fmt.VideoWriter
    frames: list[np.ndarray]
    motion_sum: float = 0.0
    previous: np.ndarray | None = None
    count: int = 0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "video"


def prepare_file(path: Path, rel: str, out: Path, config: PrepConfig, detector: SpeechDetector | None,
                 extractor: PoseExtractor | None) -> list[fmt.ClipMeta]:
    """Turn one video file into clips; raises on any problem (the caller reports it)."""
    audio = decode_audio(path)
    identity = _slug(str(Path(rel).parent)) if Path(rel).parent != Path(".") else _slug(Path(rel).stem)
    caption_file = path.with_suffix(".txt")
    caption = caption_file.read_text().strip() if caption_file.is_file() else ""
    per_segment = int(round(config.segment_seconds * fmt.FPS))
    min_frames = int(round(config.min_seconds * fmt.FPS))
    base = _slug(str(Path(rel).with_suffix("")))
    metas: list[fmt.ClipMeta] = []
    segment: _Segment | None = None
    size: tuple[int, int] | None = None
    aspect = ""
    written: list[Path] = []

    def start(index: int) -> _Segment:
        clip_id = f"{base}-{index:03d}"
        clip_path = fmt.clip_dir(out, clip_id)
        if clip_path.exists():
            shutil.rmtree(clip_path)
        clip_path.mkdir(parents=True)
        written.append(clip_path)
        return _Segment(clip_id, clip_path, fmt.VideoWriter(clip_path / fmt.VIDEO_FILE, *size, fmt.FPS, config.crf), [])

    def finish(seg: _Segment, first_frame: int) -> None:
        seg.writer.close()
        if seg.count < min_frames:
            shutil.rmtree(seg.path)
            written.remove(seg.path)
            return
        seg_audio = None
        if audio is not None:
            start_sample = first_frame * fmt.SAMPLES_PER_FRAME
            seg_audio = audio[start_sample:start_sample + seg.count * fmt.SAMPLES_PER_FRAME]
            seg_audio = np.pad(seg_audio, (0, seg.count * fmt.SAMPLES_PER_FRAME - len(seg_audio)))
            fmt.write_audio(seg.path / fmt.AUDIO_FILE, seg_audio)
        keypoints = extractor(np.stack(seg.frames)) if extractor is not None else None
        if keypoints is not None:
            fmt.write_keypoints(seg.path / fmt.KEYPOINTS_FILE, keypoints)
        motion = seg.motion_sum / max(1, seg.count - 1)
        flags = quality_flags(seg_audio, motion, keypoints is not None, detector, config)
        text = caption or ("a person talking" if flags.has_speech else "a person, mostly silent")
        meta = fmt.ClipMeta(
            id=seg.clip_id, caption=text, identity=identity, framing="unknown", aspect=aspect, fps=fmt.FPS,
            width=size[0], height=size[1], frames=seg.count, duration_s=round(seg.count / fmt.FPS, 4),
            source=f"prep:{rel}", split=fmt.split_for_identity(identity, config.split_seed), flags=flags,
            extra={"input": rel, "segment": len(metas), "start_s": round(first_frame / fmt.FPS, 3),
                   "caption_source": "sidecar" if caption else "generic"},
        )
        fmt.write_meta(seg.path, meta)
        metas.append(meta)

    try:
        index = 0
        for index, frame in enumerate(frames_at_fps(path, fmt.FPS)):
            if size is None:
                aspect = aspect_bucket(frame.shape[1], frame.shape[0])
                size = fmt.frame_size(aspect, config.short_side, config.size_multiple)
            if index % per_segment == 0:
                if segment is not None:
                    finish(segment, index - per_segment)
                segment = start(index // per_segment)
            image = crop_resize(frame, *size)
            segment.writer.write(image)
            if extractor is not None:
                segment.frames.append(image)
            current = image.astype(np.int16)
            if segment.previous is not None:
                segment.motion_sum += float(np.abs(current - segment.previous).mean()) / 255.0
            segment.previous = current
            segment.count += 1
        if segment is not None:
            finish(segment, index - segment.count + 1)
            segment = None
        if not metas:
            raise InputError(f"shorter than {config.min_seconds:g} s")
    except BaseException:
        if segment is not None:
            segment.writer.__exit__(RuntimeError, None, None)
        for clip_path in written:
            shutil.rmtree(clip_path, ignore_errors=True)
        raise
    return metas


# ------------------------------------------------------------------------------------------------
# A folder
# ------------------------------------------------------------------------------------------------


def _is_caption(path: Path) -> bool:
    """A NAME.txt next to another file NAME.* is that file's caption, not an input."""
    return path.suffix.lower() == ".txt" and any(
        p != path and p.is_file() for p in path.parent.glob(f"{glob.escape(path.stem)}.*"))


def _reason(error: BaseException) -> str:
    if isinstance(error, InputError):
        return str(error)
    if isinstance(error, av.error.FFmpegError):
        return f"unreadable media: {error.strerror or error}"
    return f"{type(error).__name__}: {error}"


def prepare(in_dir: str | Path, out_dir: str | Path, config: PrepConfig | None = None,
            extractor: PoseExtractor | None = None) -> dict:
    """Prepare every file under `in_dir` into the dataset at `out_dir`; returns (and writes) the report."""
    in_dir, out = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise InputError(f"input folder {in_dir} does not exist")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if out.resolve() == in_dir.resolve():
        raise InputError("--out must differ from --in")
    config = config or PrepConfig()
    (out / fmt.CLIPS_DIR).mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in in_dir.rglob("*") if p.is_file() and not _is_caption(p)
                   and out.resolve() not in p.resolve().parents)
    detector = SpeechDetector()
    started = time.perf_counter()
    metas = fmt.scan_clip_metas(out)
    report: dict = {"inputs": len(files), "usable": 0, "clips": [], "failures": [], "seconds": 0.0}
    for path in files:
        rel = str(path.relative_to(in_dir))
        try:
            clips = prepare_file(path, rel, out, config, detector, extractor)
        except (InputError, av.error.FFmpegError, OSError, ValueError, RuntimeError, EOFError) as error:
            logger.warning("prep: skipping %s: %s", rel, _reason(error))
            report["failures"].append({"file": rel, "reason": _reason(error)})
            continue
        report["usable"] += 1
        for meta in clips:
            metas[meta.id] = meta
            report["clips"].append({"id": meta.id, "file": rel, "seconds": meta.duration_s,
                                    "audio_present": meta.flags.audio_present, "has_speech": meta.flags.has_speech,
                                    "speech_ratio": meta.flags.speech_ratio, "conditions": meta.flags.conditions})
            report["seconds"] += meta.duration_s
    fmt.rebuild_index(out, metas)
    report["seconds"] = round(report["seconds"], 2)
    report["failed"] = len(report["failures"])
    report["wall_s"] = round(time.perf_counter() - started, 2)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    return report
