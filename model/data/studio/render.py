"""Render studio clips into the dataset format, in parallel, deterministically by seed."""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.data import format as fmt
from model.data.studio.camera import FRAMING_TEXT, frame_camera
from model.data.studio.captions import caption, sample_style
from model.data.studio.config import StudioConfig
from model.data.studio.drawing import Painter
from model.data.studio.identity import sample_identity
from model.data.studio.motion import motion_from_audio
from model.data.studio.rig import Rig
from model.data.studio.speech import make_speech
from model.errors import InputError

logger = logging.getLogger(__name__)

# stream ids of the per-clip random generators (seed, stream, index)
_CLIP_STREAM, _IDENTITY_STREAM = 1, 2
SPEAKING_OPENNESS = 0.02   # a frame whose mouth is opened more than this counts as speech


def clip_id(seed: int, index: int) -> str:
    """Folder name of the index-th clip of a seed."""
    return f"s{seed}-{index:06d}"


def identity_id(seed: int, identity_index: int) -> str:
    """Name of a studio person."""
    return f"s{seed}-p{identity_index:05d}"


def _choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = sorted(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return str(rng.choice(names, p=p / p.sum()))


@dataclass(frozen=True)
class ClipJob:
    """Everything a worker needs to render one clip."""

    root: str
    seed: int
    index: int
    config: StudioConfig


def render_clip(job: ClipJob) -> fmt.ClipMeta:
    """Render one clip folder (video, audio, keypoints, meta) and return its meta."""
    cfg = job.config
    spf = cfg.sample_rate // cfg.fps
    rng = np.random.default_rng([job.seed, _CLIP_STREAM, job.index])
    identity_index = job.index // cfg.clips_per_identity
    identity = sample_identity(np.random.default_rng([job.seed, _IDENTITY_STREAM, identity_index]),
                               identity_id(job.seed, identity_index))
    style = sample_style(rng)
    framing = _choice(rng, cfg.framing_weights)
    aspect = _choice(rng, cfg.aspect_weights)
    speech = make_speech(rng, cfg.sample_rate, spf, cfg.min_seconds, cfg.max_seconds,
                         cfg.mostly_silent_probability, cfg.flite_probability)
    motion = motion_from_audio(rng, speech.audio, cfg.sample_rate, cfg.fps, style,
                               mouth_gain=float(rng.uniform(0.85, 1.1)))
    rig = Rig(identity)
    width, height = fmt.frame_size(aspect, cfg.short_side, cfg.size_multiple)
    camera = frame_camera(rig, framing, width, height, rng)
    painter = Painter(identity, camera, cfg.supersample, rng)

    cid = clip_id(job.seed, job.index)
    out = fmt.clip_dir(Path(job.root), cid)
    out.mkdir(parents=True, exist_ok=True)
    frames = len(speech.audio) // spf
    xy = np.zeros((frames, fmt.NUM_KEYPOINTS, 2), dtype=np.float32)
    motion_sum, previous = 0.0, None
    with fmt.VideoWriter(out / fmt.VIDEO_FILE, width, height, cfg.fps, cfg.crf) as writer:
        for t in range(frames):
            pose = rig.pose(motion, t)
            frame = painter.draw(pose)
            writer.write(frame)
            xy[t] = camera.to_normalized(pose.keypoints)
            if previous is not None:
                motion_sum += float(np.abs(frame.astype(np.int16) - previous).mean()) / 255.0
            previous = frame.astype(np.int16)
    visibility = np.all((xy >= 0.0) & (xy <= 1.0), axis=2).astype(np.float32)
    fmt.write_audio(out / fmt.AUDIO_FILE, speech.audio, cfg.sample_rate)
    fmt.write_keypoints(out / fmt.KEYPOINTS_FILE, fmt.Keypoints(
        xy=xy, visibility=visibility, mouth_open=motion.mouth_open.astype(np.float32)))

    speech_ratio = float(np.mean(motion.mouth_open > SPEAKING_OPENNESS)) if frames else 0.0
    flags = fmt.QualityFlags(
        audio_present=True, has_speech=bool(speech.segments), speech_ratio=round(speech_ratio, 4),
        motion=round(motion_sum / max(1, frames - 1), 6), has_pose=True, conditions=list(fmt.CONDITIONS))
    meta = fmt.ClipMeta(
        id=cid, caption=caption(style, speech.mostly_silent, FRAMING_TEXT[framing], identity.describe()),
        identity=identity.id, framing=framing, aspect=aspect, fps=cfg.fps, width=width, height=height,
        frames=frames, sample_rate=cfg.sample_rate, duration_s=round(frames / cfg.fps, 4), source="studio",
        split=fmt.split_for_identity(identity.id, job.seed, cfg.val_fraction, cfg.test_fraction), flags=flags,
        extra={"seed": job.seed, "index": job.index, "style": style.describe(), "voice": speech.voice.describe(),
               "mostly_silent": speech.mostly_silent, "segments": speech.segments, "rest_pose": motion.rest_pose,
               "identity": identity.to_json()},
    )
    fmt.write_meta(out, meta)
    return meta


# ------------------------------------------------------------------------------------------------
# Many clips
# ------------------------------------------------------------------------------------------------


def synthesize(root: str | Path, clips: int, seed: int, workers: int = 1, config: StudioConfig | None = None,
               progress: Callable[[int, int], None] | None = None) -> dict:
    """Render clips 0..clips-1 of a seed into `root` (skipping finished ones); returns a summary."""
    if clips < 1:
        raise InputError("--clips must be at least 1")
    if workers < 1:
        raise InputError("--workers must be at least 1")
    if seed < 0:
        raise InputError("--seed must be >= 0")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} exists and is not a folder")
    config = config or StudioConfig()
    (root / fmt.CLIPS_DIR).mkdir(parents=True, exist_ok=True)
    metas = fmt.scan_clip_metas(root)
    jobs = [ClipJob(str(root), seed, i, config) for i in range(clips) if clip_id(seed, i) not in metas]
    logger.info("rendering %d clips into %s (%d already there) with %d workers", len(jobs), root,
                clips - len(jobs), workers)
    started = time.perf_counter()
    rendered: list[fmt.ClipMeta] = []

    def finished(meta: fmt.ClipMeta) -> None:
        metas[meta.id] = meta
        rendered.append(meta)
        if progress:
            progress(len(rendered), len(jobs))
        if len(rendered) % config.index_every == 0:
            fmt.rebuild_index(root, metas)

    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            finished(render_clip(job))
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for meta in pool.imap_unordered(render_clip, jobs, chunksize=1):
                finished(meta)
    fmt.rebuild_index(root, metas)
    wall = time.perf_counter() - started
    seconds = sum(m.duration_s for m in rendered)
    splits = {s: sum(1 for m in metas.values() if m.split == s) for s in fmt.SPLITS}
    return {
        "out": str(root), "seed": seed, "workers": workers, "clips": len(rendered), "clips_total": len(metas),
        "skipped_existing": clips - len(jobs), "seconds": round(seconds, 2), "frames": sum(m.frames for m in rendered),
        "wall_s": round(wall, 2), "clips_per_minute": round(60.0 * len(rendered) / wall, 2) if wall > 0 else None,
        "realtime_factor": round(seconds / wall, 3) if wall > 0 else None, "splits": splits,
        "identities": len({m.identity for m in metas.values()}),
    }
