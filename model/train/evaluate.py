"""Evaluation of a checkpoint on held-out clips, streaming through the pipeline as the server does.

Every figure is measured on decoded RGB frames, never on latents:
- lip sync: Pearson correlation between the ground-truth mouth openness (studio keypoints) and the
  openness measured on generated frames = fraction of dark pixels (luma < 0.55 x the box median)
  inside the ground-truth lip-contour box; `metric_validity` is the same correlation measured on the
  ground-truth frames, i.e. how well the frame measure can follow a mouth at this resolution, and
  `lipsync_vae_ceiling` the same on the ground truth passed through the checkpoint's VAE (encode ->
  decode): the most lip sync any DiT can reach through that VAE.
- silence: median openness over silent stretches / median over speaking frames (generated frames).
- reconstruction: PSNR / SSIM of offline renders (audio + pose + text given) vs the ground truth.
- motion: mean frame-to-frame change of audio-only streams / of the ground truth (1 = as lively).
- seams: frame-to-frame change at chunk boundaries / inside chunks.
- drift: appearance similarity to the reference (colour histogram + structure) over the first vs
  the last `window` seconds of one continuous stream of `minutes` (the clip's audio looped).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from model.data import format as fmt
from model.data import keypoints as kp
from model.errors import InputError
from model.flow import Guidance
from model.pipeline import AvatarPipeline, StreamOptions
from model.train.frames import bucket_size, resize_frames
from model.train.metrics import (
    appearance_similarity, mouth_box, mouth_openness, pearson, psnr, seam_ratio, silence_ratio, ssim, uint8_to_float,
)

logger = logging.getLogger(__name__)

PUSH_SAMPLES = 320            # 20 ms pieces, as audio ingest delivers them
FRAMING_ORDER = ("face", "portrait", "half_body", "full_body", "unknown")
SPEAKING_OPEN = 0.08          # ground-truth mouth_open above this = speaking frame
MIN_SILENT_RUN = 8            # frames; shorter gaps between words do not count as silence
SILENT_EDGE = 3               # frames dropped at each end of a silent run (mouth closing/opening)


class VoiceActivity(Protocol):
    """What the server's per-session VAD offers (avatar_server.vad)."""

    def process(self, pcm: np.ndarray) -> bool: ...


@dataclass
class EvalSettings:
    """What to measure and how much of it."""

    split: str = "test"
    clips: int = 4
    sweep_clips: int = 1
    sweep_steps: tuple[int, ...] = (1, 2, 4)
    sweep_audio_cfg: tuple[float, ...] = (1.0, 1.5, 3.0)
    drift_minutes: float = 5.0
    drift_window_s: float = 10.0
    seed: int = 0
    framings: tuple[str, ...] | None = None  # only clips of these framings (None: all, close ones first)


@dataclass
class HeldoutClip:
    """A held-out clip at the model's resolution with its ground truth."""

    id: str
    framing: str
    caption: str
    frames: np.ndarray          # uint8 [T, H, W, 3]
    audio: np.ndarray           # float32 [S]
    xy: np.ndarray              # [T, K, 2]
    visibility: np.ndarray      # [T, K]
    mouth_open: np.ndarray      # [T]
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def speaking(self) -> np.ndarray:
        return np.nan_to_num(self.mouth_open) > SPEAKING_OPEN


def load_heldout(root: Path, settings: EvalSettings, pipe: AvatarPipeline, limit: int) -> list[HeldoutClip]:
    """Up to `limit` clips of the split with audio and keypoints whose aspect bucket is the pipeline's output
    size (what render() produces), close framings first (mouths visible)."""
    unit = pipe.vae.downsample * pipe.dit.config.patch_size
    area = pipe.config.height * pipe.config.width
    size = (pipe.config.height, pipe.config.width)
    entries = [e for e in fmt.read_index(root).split(settings.split, settings.framings)
               if {"audio", "pose"} <= set(e.conditions) and bucket_size(e.width, e.height, area, unit) == size]
    if not entries:
        framed = f" {'/'.join(settings.framings)}" if settings.framings else ""
        raise InputError(f"dataset {root} has no {settings.split!r}{framed} clips with audio, keypoints and the "
                         f"{size[1]}x{size[0]} aspect of the model's output")
    entries.sort(key=lambda e: (FRAMING_ORDER.index(e.framing) if e.framing in FRAMING_ORDER else 9, e.id))
    clips = []
    for entry in entries[:limit]:
        clip = fmt.load_clip(root, entry.id)
        height, width = size
        frames = resize_frames(clip.frames, height, width).permute(0, 2, 3, 1).numpy()
        keypoints = clip.keypoints
        boxes = [mouth_box(keypoints.xy[t, kp.LIPS], width, height) for t in range(len(frames))]
        clips.append(HeldoutClip(id=entry.id, framing=entry.framing, caption=entry.caption, frames=frames,
                                 audio=clip.audio, xy=keypoints.xy, visibility=keypoints.visibility,
                                 mouth_open=keypoints.mouth_open, boxes=boxes))
    return clips


#################################################################################
#                         Streaming as the server does                          #
#################################################################################

def stream_clip(pipe: AvatarPipeline, reference: np.ndarray, audio: np.ndarray, frames: int, text: str | None,
                seed: int, steps: int | None = None, guidance: Guidance | None = None,
                activity: VoiceActivity | None = None) -> np.ndarray:
    """Push `audio` in 20 ms pieces (VAD-gated when `activity` is given), generate every chunk as soon as
    it is ready, flush with silence; returns uint8 [frames, H, W, 3]."""
    height, width = reference.shape[:2]
    features = pipe.encode_reference(reference, height=height, width=width)
    stream = pipe.open_stream(features, StreamOptions(text=text, seed=seed, steps=steps, guidance=guidance))
    out: list[np.ndarray] = []
    produced = 0
    try:
        position = 0
        while produced < frames:
            piece = audio[position:position + PUSH_SAMPLES] if position < len(audio) else np.zeros(PUSH_SAMPLES, np.float32)
            voiced = activity.process(piece) if activity is not None and position < len(audio) else position < len(audio)
            stream.push_audio(piece, voiced=voiced)
            position += PUSH_SAMPLES
            while produced < frames and stream.ready():
                chunk = pipe.generate([stream], steps=steps)[0]
                out.append(chunk.frames)
                produced += len(chunk.frames)
    finally:
        stream.close()
    return np.concatenate(out)[:frames]


#################################################################################
#                                    Metrics                                    #
#################################################################################

def silent_mask(speaking: np.ndarray) -> np.ndarray:
    """Frames inside silent stretches of at least MIN_SILENT_RUN frames, edges trimmed."""
    mask = np.zeros(len(speaking), dtype=bool)
    start = None
    for t, value in enumerate(list(speaking) + [True]):
        if not value and start is None:
            start = t
        elif value and start is not None:
            if t - start >= MIN_SILENT_RUN:
                mask[start + SILENT_EDGE:t - SILENT_EDGE] = True
            start = None
    return mask


def lip_sync(clip: HeldoutClip, frames: np.ndarray) -> float:
    """Correlation of the ground-truth mouth openness with the openness measured on `frames`."""
    n = min(len(frames), len(clip.frames))
    return pearson(np.nan_to_num(clip.mouth_open[:n]), mouth_openness(frames[:n], clip.boxes[:n]))


def lip_figures(clip: HeldoutClip, generated: np.ndarray) -> dict[str, float]:
    """Lip-sync correlation and silence ratio of generated frames, plus the measure's validity on ground truth."""
    n = min(len(generated), len(clip.frames))
    measured = mouth_openness(generated[:n], clip.boxes[:n])
    truth = np.nan_to_num(clip.mouth_open[:n])
    silent = silent_mask(clip.speaking[:n])
    speaking = clip.speaking[:n]
    keep = silent | speaking
    return {
        "lipsync_corr": pearson(truth, measured),
        "metric_validity": lip_sync(clip, clip.frames[:n]),
        "silence_ratio": silence_ratio(measured[keep], speaking[keep]) if silent.any() else float("nan"),
        "open_speaking": float(np.median(measured[speaking])) if speaking.any() else float("nan"),
        "open_silent": float(np.median(measured[silent])) if silent.any() else float("nan"),
    }


@torch.no_grad()
def vae_roundtrip(pipe: AvatarPipeline, frames: np.ndarray) -> np.ndarray:
    """uint8 frames [T, H, W, 3] through the pipeline's VAE (encode -> decode), uint8 [T, H, W, 3]."""
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [T, 3, H, W]
    return pipe.vae.decode_uint8(pipe.vae.encode(pixels)).numpy()


def motion_energy(frames: np.ndarray) -> float:
    """Mean absolute frame-to-frame change (0..255 scale)."""
    return float(np.abs(np.diff(frames.astype(np.float32), axis=0)).mean())


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


#################################################################################
#                                   Evaluation                                  #
#################################################################################

def evaluate(checkpoint: Path, data: Path, settings: EvalSettings,
             make_activity: Callable[[], VoiceActivity] | None = None) -> dict:
    """All figures of the checkpoint on held-out clips of `data` (see the module docstring)."""
    began = time.monotonic()
    pipe = AvatarPipeline.from_pretrained(checkpoint)
    clips = load_heldout(data, settings, pipe, max(settings.clips, settings.sweep_clips, 1))
    chunk_frames = pipe.config.chunk_frames
    per_clip = []
    for clip in clips[: settings.clips]:
        reference = clip.frames[0]
        activity = make_activity() if make_activity else None
        streamed = stream_clip(pipe, reference, clip.audio, len(clip.frames), clip.caption, settings.seed, activity=activity)
        rendered = pipe.render(reference, clip.audio, pose=(clip.xy, clip.visibility), text=clip.caption, seed=settings.seed)
        n = min(len(rendered), len(clip.frames))
        truth, fake = uint8_to_float(clip.frames[:n]), uint8_to_float(rendered[:n])
        row = {"id": clip.id, "framing": clip.framing, "frames": len(clip.frames), **lip_figures(clip, streamed),
               "lipsync_corr_pose": lip_sync(clip, rendered),
               "lipsync_vae_ceiling": lip_sync(clip, vae_roundtrip(pipe, clip.frames)),
               "psnr": psnr(fake, truth), "ssim": ssim(fake, truth),
               "psnr_audio_only": psnr(uint8_to_float(streamed[:n]), truth),
               "motion_ratio": motion_energy(streamed) / max(motion_energy(clip.frames), 1e-6),
               "seam_ratio": seam_ratio(streamed, chunk_frames)}
        per_clip.append(row)
        logger.info("eval %s (%s): %s", clip.id, clip.framing,
                    ", ".join(f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float)))
    summary = {key: _nanmean([row[key] for row in per_clip]) for key in
               ("lipsync_corr", "lipsync_corr_pose", "lipsync_vae_ceiling", "metric_validity", "silence_ratio", "open_speaking",
                "open_silent", "psnr", "ssim", "psnr_audio_only", "motion_ratio", "seam_ratio")}
    result = {"checkpoint": str(checkpoint), "data": str(data), "split": settings.split, "clips": len(per_clip),
              "chunk_frames": chunk_frames, "steps": pipe.config.steps, "vad": make_activity is not None, **summary,
              "sweep": sweep(pipe, clips[: settings.sweep_clips], settings, make_activity),
              "drift": drift(pipe, clips[0], settings) if settings.drift_minutes > 0 else None,
              "per_clip": per_clip}
    result["wall_s"] = round(time.monotonic() - began, 1)
    return result


def sweep(pipe: AvatarPipeline, clips: list[HeldoutClip], settings: EvalSettings,
          make_activity: Callable[[], VoiceActivity] | None) -> list[dict]:
    """Lip sync, silence and seams for every (steps, audio CFG scale) pair, on audio-only streams."""
    base = Guidance.from_config(pipe.model_config.sampler)
    rows = []
    for steps in settings.sweep_steps:
        for scale in settings.sweep_audio_cfg:
            guidance = Guidance(audio=scale, text=base.text, anneal=base.anneal, min_scale=base.min_scale)
            figures = []
            began = time.monotonic()
            for clip in clips:
                activity = make_activity() if make_activity else None
                frames = stream_clip(pipe, clip.frames[0], clip.audio, len(clip.frames), clip.caption, settings.seed,
                                     steps=steps, guidance=guidance, activity=activity)
                figures.append({**lip_figures(clip, frames), "seam_ratio": seam_ratio(frames, pipe.config.chunk_frames)})
            row = {"steps": steps, "audio_cfg": scale,
                   **{k: _nanmean([f[k] for f in figures]) for k in ("lipsync_corr", "silence_ratio", "seam_ratio")},
                   "ms_per_frame": round(1000 * (time.monotonic() - began) / max(1, sum(len(c.frames) for c in clips)), 1)}
            rows.append(row)
            logger.info("sweep steps=%d audio_cfg=%.1f: %s", steps, scale, row)
    return rows


def drift(pipe: AvatarPipeline, clip: HeldoutClip, settings: EvalSettings) -> dict:
    """Similarity to the reference at the start vs the end of one continuous stream (audio looped)."""
    fps = pipe.config.fps
    frames = int(settings.drift_minutes * 60 * fps)
    window = max(pipe.config.chunk_frames, int(settings.drift_window_s * fps))
    repeats = math.ceil(frames * pipe.config.samples_per_frame / len(clip.audio)) + 1
    audio = np.tile(clip.audio, repeats)
    reference = clip.frames[0]
    began = time.monotonic()
    video = stream_clip(pipe, reference, audio, frames, clip.caption, settings.seed)
    start = appearance_similarity(video[:window], reference)
    end = appearance_similarity(video[-window:], reference)
    return {"clip": clip.id, "minutes": settings.drift_minutes, "window_s": window / fps,
            "similarity_start": start, "similarity_end": end, "ratio": end / max(start, 1e-6),
            "seam_ratio": seam_ratio(video, pipe.config.chunk_frames),
            "wall_s": round(time.monotonic() - began, 1)}
