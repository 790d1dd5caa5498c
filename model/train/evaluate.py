"""Evaluation of a checkpoint on held-out clips, streaming through the pipeline as the server does.

Every figure is measured on decoded RGB frames, never on latents:
- lip sync: Pearson correlation between the ground-truth mouth openness (studio keypoints) and the
  openness read on generated frames in the lip box: by the mouth reader (weights/mouth-reader, a small
  CNN trained on studio frames against their keypoint openness) or, without one, the fraction of dark
  pixels (luma < 0.8 x the box median); `metric_validity` is the same correlation measured on the
  ground-truth frames, i.e. how well the frame measure can follow a mouth at this resolution, and
  `lipsync_vae_ceiling` the same on the ground truth passed through the checkpoint's VAE (encode ->
  decode): the most lip sync any DiT can reach through that VAE.
- silence: median openness over silent stretches / median over speaking frames (generated frames).
- reconstruction: PSNR / SSIM of offline renders (audio + pose + text given) vs the ground truth.
- motion: mean frame-to-frame change of audio-only streams / of the ground truth (1 = as lively).
- seams: frame-to-frame change at chunk boundaries / inside chunks.
- drift: appearance similarity to the reference (colour histogram + structure) over the first vs
  the last `window` seconds of one continuous stream of `minutes` (the clip's audio looped).
- identity: that similarity of the whole stream to the reference, beside the ground truth's own.
- stillness: frame-to-frame change inside silent stretches, generated / ground truth.
- by steps: the audio-only stream's figures at each step count of `steps_list` (default steps and 1).
- human voice: recorded speech (not the studio's TTS) joined with pauses and streamed through the avatar
  picture; the openness read in the avatar's mouth box against the voice's loudness envelope,
  beside the same figures of studio ground truth (the yardstick).
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
from model.media import Mp4Writer, load_audio, load_image
from model.pipeline import FALLBACK_MOUTH, AvatarPipeline, ReferenceFeatures, StreamOptions
from model.train.frames import bucket_size, resize_frames
from model.train.metrics import (
    SILENT_EDGE,
    appearance_similarity,
    loudness_envelope,
    mouth_box,
    mouth_box_at,
    mouth_change,
    mouth_openness,
    pearson,
    psnr,
    seam_ratio,
    shut_reading,
    silence_ratio,
    silent_mask,
    ssim,
    stillness,
    uint8_to_float,
    voice_figures,
)
from model.train.mouth_reader import MouthReader

logger = logging.getLogger(__name__)

PUSH_SAMPLES = 320            # 20 ms pieces, as audio ingest delivers them
FRAMING_ORDER = ("face", "portrait", "half_body", "full_body", "unknown")
SPEAKING_OPEN = 0.08          # ground-truth mouth_open above this = speaking frame
DEFAULT_STEPS = "DEFAULT"     # in a steps list: the checkpoint's own step count
HUMAN_VOICE_DIR = Path("/usr/share/sounds/alsa")  # Debian alsa-utils' recorded speech (48 kHz wav)
DEFAULT_REFERENCE = Path(__file__).resolve().parents[2] / "avatar_server" / "assets" / "default_avatar.png"
DEFAULT_READER = Path(__file__).resolve().parents[2] / "weights" / "mouth-reader"
YARDSTICK_CLIPS = 4           # studio clips whose ground truth is the human-voice yardstick
# the audio-only stream's figures, per clip, reported for every step count (by_steps) and at the top level
STREAM_KEYS = ("lipsync_corr", "silence_ratio", "open_speaking", "open_silent", "psnr_audio_only", "motion_ratio",
               "seam_ratio", "stillness_ratio", "similarity_ref", "similarity_ref_truth", "similarity_ratio")


Box = tuple[int, int, int, int]
OpennessMeasure = Callable[[np.ndarray, list[Box]], np.ndarray]  # frames [T, H, W, 3], boxes -> openness [T]


def openness_measure(reader: Path | None) -> tuple[OpennessMeasure, str]:
    """The frame measure of mouth openness and its name: the mouth reader in `reader` or the dark pixels."""
    if reader is None:
        return mouth_openness, "dark pixels"
    if not (reader / "config.json").is_file():
        raise InputError(f"mouth reader folder not found: {reader} (train it: configs/train/mouth-reader.yaml)")
    return MouthReader.from_pretrained(str(reader)).eval().read, f"mouth reader ({reader})"


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
    steps_list: tuple[int | None, ...] = (None, 1)  # step counts of by_steps (None: the checkpoint's default)
    human_voice: tuple[Path, ...] = ()  # recordings for the human-voice figure (empty: skip it)
    reference: Path = DEFAULT_REFERENCE  # the avatar picture that speaks them
    pause_s: float = 1.0          # silence between (and after) the recordings
    reader: Path | None = DEFAULT_READER  # the mouth reader folder (None: the dark-pixel measure)
    save_video: Path | None = None  # write the default-steps human-voice video here (mp4 with the audio)


def human_voice_recordings(folder: Path | None = None) -> tuple[Path, ...]:
    """The *.wav recordings of a folder, sorted (default: alsa-utils'; empty when that is not installed)."""
    if folder is None:
        return tuple(sorted(HUMAN_VOICE_DIR.glob("*.wav"))) if HUMAN_VOICE_DIR.is_dir() else ()
    if not folder.is_dir():
        raise InputError(f"human-voice folder not found: {folder}")
    recordings = tuple(sorted(folder.glob("*.wav")))
    if not recordings:
        raise InputError(f"human-voice folder {folder} has no .wav recordings")
    return recordings


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
    return stream_features(pipe, features, audio, frames, text, seed, steps, guidance, activity)[0]


def stream_features(pipe: AvatarPipeline, features: ReferenceFeatures, audio: np.ndarray, frames: int,
                    text: str | None, seed: int, steps: int | None = None, guidance: Guidance | None = None,
                    activity: VoiceActivity | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """`stream_clip` on a prepared reference; also the chunks' predicted mouth openness [frames] (None when
    the model predicts none)."""
    stream = pipe.open_stream(features, StreamOptions(text=text, seed=seed, steps=steps, guidance=guidance))
    out: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
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
                if chunk.mouth_open is not None:
                    predicted.append(np.asarray(chunk.mouth_open, dtype=np.float32))
                produced += len(chunk.frames)
    finally:
        stream.close()
    openness = np.concatenate(predicted)[:frames] if len(predicted) == len(out) and predicted else None
    return np.concatenate(out)[:frames], openness


#################################################################################
#                                    Metrics                                    #
#################################################################################

def _truth_corr(truth: np.ndarray, measured: np.ndarray) -> float:
    """Pearson correlation with the ground truth; NaN when the ground-truth mouth never moves (a silent clip
    says nothing about lip sync, and the means skip it)."""
    return pearson(truth, measured) if np.ptp(truth) > 0 else float("nan")


def lip_sync(clip: HeldoutClip, frames: np.ndarray, measure: OpennessMeasure) -> float:
    """Correlation of the ground-truth mouth openness with the openness measured on `frames`."""
    n = min(len(frames), len(clip.frames))
    return _truth_corr(np.nan_to_num(clip.mouth_open[:n]), measure(frames[:n], clip.boxes[:n]))


def lip_figures(clip: HeldoutClip, generated: np.ndarray, measure: OpennessMeasure) -> dict[str, float]:
    """Lip-sync correlation and silence ratio of an audio-only stream, plus the measure's validity on ground
    truth. Without a pose the avatar's head stays where the reference (the clip's first frame) has it, so the
    stream's mouth is read in that frame's lip box; the ground truth's in its own box, which follows its head
    (reading a still mouth in a box that sways with another video's head measures the sway, not the mouth)."""
    n = min(len(generated), len(clip.frames))
    measured = measure(generated[:n], clip.boxes[:1] * n)
    truth = np.nan_to_num(clip.mouth_open[:n])
    silent = silent_mask(clip.speaking[:n])
    speaking = clip.speaking[:n]
    keep = silent | speaking
    truth_measured = measure(clip.frames[:n], clip.boxes[:n])
    shut = shut_reading(truth_measured)  # the measure's zero for these boxes: the ground truth's shut mouth
    return {
        "lipsync_corr": _truth_corr(truth, measured),
        "metric_validity": _truth_corr(truth, truth_measured),
        # both above the same zero, so a generated mouth that never shuts is not excused
        "silence_ratio": silence_ratio(measured[keep], speaking[keep], shut) if silent.any() else float("nan"),
        "silence_ratio_truth": silence_ratio(truth_measured[keep], speaking[keep], shut) if silent.any() else float("nan"),
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


def stream_figures(clip: HeldoutClip, streamed: np.ndarray, chunk_frames: int,
                   measure: OpennessMeasure) -> dict[str, float]:
    """The audio-only stream's figures of one clip (STREAM_KEYS: lips, silence, seams, stillness, identity), plus
    the lip measure's own on the ground truth (metric_validity, silence_ratio_truth)."""
    n = min(len(streamed), len(clip.frames))
    reference = clip.frames[0]
    silent = silent_mask(clip.speaking[:n])
    still_truth = stillness(clip.frames[:n], silent)
    similarity, similarity_truth = appearance_similarity(streamed, reference), appearance_similarity(clip.frames, reference)
    figures = {**lip_figures(clip, streamed, measure),
               "psnr_audio_only": psnr(uint8_to_float(streamed[:n]), uint8_to_float(clip.frames[:n])),
               "motion_ratio": motion_energy(streamed) / max(motion_energy(clip.frames), 1e-6),
               "seam_ratio": seam_ratio(streamed, chunk_frames),
               "stillness_ratio": stillness(streamed[:n], silent) / still_truth if still_truth > 0 else float("nan"),
               "similarity_ref": similarity, "similarity_ref_truth": similarity_truth,
               "similarity_ratio": similarity / max(similarity_truth, 1e-6)}
    return figures


def summarize(rows: list[dict], keys: tuple[str, ...]) -> dict[str, float]:
    """Mean of each key over the rows (NaN skipped); similarity_ratio is the ratio of the two means."""
    summary = {key: _nanmean([row[key] for row in rows]) for key in keys}
    if {"similarity_ref", "similarity_ref_truth", "similarity_ratio"} <= set(keys):
        summary["similarity_ratio"] = summary["similarity_ref"] / max(summary["similarity_ref_truth"], 1e-6)
    return summary


def steps_label(pipe: AvatarPipeline, steps: int | None) -> str:
    """The by_steps key of a step count (None: the checkpoint's default)."""
    return str(pipe.config.steps if steps is None else steps)


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
    measure, measure_name = openness_measure(settings.reader)
    pipe = AvatarPipeline.from_pretrained(checkpoint)
    wanted = max(settings.clips, settings.sweep_clips, YARDSTICK_CLIPS if settings.human_voice else 1)
    clips = load_heldout(data, settings, pipe, wanted)
    chunk_frames = pipe.config.chunk_frames
    labels = {steps_label(pipe, steps): steps for steps in settings.steps_list}  # "2" -> None, "1" -> 1
    default_label = steps_label(pipe, None)
    per_clip, per_steps = [], {label: [] for label in labels}
    for clip in clips[: settings.clips]:
        reference = clip.frames[0]
        activity = make_activity() if make_activity else None
        streamed = stream_clip(pipe, reference, clip.audio, len(clip.frames), clip.caption, settings.seed, activity=activity)
        rendered = pipe.render(reference, clip.audio, pose=(clip.xy, clip.visibility), text=clip.caption, seed=settings.seed)
        n = min(len(rendered), len(clip.frames))
        truth, fake = uint8_to_float(clip.frames[:n]), uint8_to_float(rendered[:n])
        streamed_figures = stream_figures(clip, streamed, chunk_frames, measure)
        row = {"id": clip.id, "framing": clip.framing, "frames": len(clip.frames), **streamed_figures,
               "lipsync_corr_pose": lip_sync(clip, rendered, measure),
               "lipsync_vae_ceiling": lip_sync(clip, vae_roundtrip(pipe, clip.frames), measure),
               "psnr": psnr(fake, truth), "ssim": ssim(fake, truth)}
        per_clip.append(row)
        for label, steps in labels.items():
            if label == default_label:
                per_steps[label].append(streamed_figures)
                continue
            activity = make_activity() if make_activity else None
            frames = stream_clip(pipe, reference, clip.audio, len(clip.frames), clip.caption, settings.seed,
                                 steps=steps, activity=activity)
            per_steps[label].append(stream_figures(clip, frames, chunk_frames, measure))
        logger.info("eval %s (%s): %s", clip.id, clip.framing,
                    ", ".join(f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float)))
    summary = summarize(per_clip, ("lipsync_corr", "lipsync_corr_pose", "lipsync_vae_ceiling", "metric_validity",
                                   "silence_ratio_truth", "psnr", "ssim") + STREAM_KEYS)
    result = {"checkpoint": str(checkpoint), "data": str(data), "split": settings.split, "clips": len(per_clip),
              "chunk_frames": chunk_frames, "steps": pipe.config.steps, "vad": make_activity is not None,
              "lip_measure": measure_name, **summary,
              "by_steps": {label: summarize(rows, STREAM_KEYS) for label, rows in per_steps.items()},
              "sweep": sweep(pipe, clips[: settings.sweep_clips], settings, measure, make_activity),
              "drift": drift(pipe, clips[0], settings) if settings.drift_minutes > 0 else None,
              "human_voice": human_voice_report(pipe, clips[:YARDSTICK_CLIPS], settings, measure, make_activity)
              if settings.human_voice else None,
              "per_clip": per_clip}
    result["wall_s"] = round(time.monotonic() - began, 1)
    return result


def sweep(pipe: AvatarPipeline, clips: list[HeldoutClip], settings: EvalSettings, measure: OpennessMeasure,
          make_activity: Callable[[], VoiceActivity] | None) -> list[dict]:
    """Lip sync, silence and seams for every (steps, audio CFG scale) pair, on audio-only streams."""
    if not clips:
        return []
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
                figures.append({**lip_figures(clip, frames, measure), "seam_ratio": seam_ratio(frames, pipe.config.chunk_frames)})
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


#################################################################################
#                            A recorded human voice                             #
#################################################################################

def join_recordings(recordings: list[Path], sample_rate: int, pause_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The recordings resampled to `sample_rate` mono, each followed by `pause_s` of silence; returns the
    audio float32 [S] and a bool [S] mask of the pauses."""
    pause = np.zeros(int(round(pause_s * sample_rate)), np.float32)
    pieces, masks = [], []
    for path in recordings:
        speech = load_audio(path, sample_rate)
        pieces += [speech, pause]
        masks += [np.zeros(len(speech), bool), np.ones(len(pause), bool)]
    if not pieces:
        raise InputError("no human-voice recordings to join")
    return np.concatenate(pieces), np.concatenate(masks)


def frame_pauses(pause_samples: np.ndarray, samples_per_frame: int, frames: int, edge: int = SILENT_EDGE) -> np.ndarray:
    """Frames lying wholly inside a pause, `edge` frames trimmed at each end of every pause."""
    padded = np.ones(frames * samples_per_frame, bool)  # the stream's silent flush after the audio counts as pause
    used = min(len(pause_samples), len(padded))
    padded[:used] = pause_samples[:used]
    inside = padded.reshape(frames, samples_per_frame).all(axis=1)
    return silent_mask(~inside, min_run=2 * edge + 1, edge=edge)


def human_voice(pipe: AvatarPipeline, reference_image: Path | np.ndarray, recordings: list[Path], measure: OpennessMeasure,
                pause_s: float = 1.0, steps: int | None = None, *, make_activity: Callable[[], VoiceActivity] | None = None,
                seed: int = 0, save_video: Path | None = None) -> dict:
    """Stream recordings (joined with pauses) through the avatar picture as the server does; the openness
    `measure` reads in the avatar's mouth box against the voice's loudness (see metrics.voice_figures)."""
    rate, per_frame = pipe.config.sample_rate, pipe.config.samples_per_frame
    audio, pauses = join_recordings(list(recordings), rate, pause_s)
    frames = -(-len(audio) // per_frame)
    image = load_image(reference_image) if isinstance(reference_image, (str, Path)) else reference_image
    features = pipe.encode_reference(image)
    box = features.mouth_bank.box if features.mouth_bank is not None else FALLBACK_MOUTH
    pixel_box = mouth_box_at(box.x, box.y, box.width, features.width, features.height)
    activity = make_activity() if make_activity else None
    video, predicted = stream_features(pipe, features, audio, frames, None, seed, steps=steps, activity=activity)
    if save_video is not None:
        with Mp4Writer(save_video, pipe.config.fps, audio, rate) as writer:
            writer.write(video)
    envelope = loudness_envelope(audio, per_frame, frames)
    openness = measure(video, [pixel_box] * len(video))
    figures = voice_figures(openness, envelope, silent=frame_pauses(pauses, per_frame, frames))
    if features.still is not None:  # the still avatar's own mouth-box change, beside the colour-based measure
        figures["change_corr"] = voice_figures(mouth_change(video, features.still, pixel_box), envelope)["corr"]
    if predicted is not None:  # the motion model's own openness, before the DiT draws it
        figures["predicted_corr"] = voice_figures(predicted, envelope)["corr"]
    logger.info("human voice, %s steps: %s", steps_label(pipe, steps), figures)
    return {**figures, "frames": int(frames), "seconds": round(len(audio) / rate, 2), "mouth_box": list(pixel_box)}


def yardstick(clips: list[HeldoutClip], samples_per_frame: int, measure: OpennessMeasure) -> dict:
    """The human-voice figures of studio ground truth: each clip's true frames (openness in its lip box)
    against its own audio's loudness, averaged over the clips."""
    rows = []
    for clip in clips:
        envelope = loudness_envelope(clip.audio, samples_per_frame, len(clip.frames))
        rows.append(voice_figures(measure(clip.frames, clip.boxes), envelope))
    summary = {key: _nanmean([row[key] for row in rows]) for key in ("corr", "lag", "open_speaking", "open_silent")}
    return {**summary, "clips": [clip.id for clip in clips], "lags": [row["lag"] for row in rows]}


def human_voice_report(pipe: AvatarPipeline, clips: list[HeldoutClip], settings: EvalSettings, measure: OpennessMeasure,
                       make_activity: Callable[[], VoiceActivity] | None) -> dict:
    """result["human_voice"]: the figures at every step count of `steps_list`, the yardstick, their ratio."""
    stick = yardstick(clips, pipe.config.samples_per_frame, measure)
    default_label = steps_label(pipe, None)
    by_steps, seconds = {}, None
    for steps in settings.steps_list:
        label = steps_label(pipe, steps)
        if label in by_steps:
            continue
        video = settings.save_video if label == default_label else None
        figures = human_voice(pipe, settings.reference, list(settings.human_voice), measure, settings.pause_s, steps,
                              make_activity=make_activity, seed=settings.seed, save_video=video)
        seconds = figures.pop("seconds")
        figures["ratio_to_yardstick"] = figures["corr"] / stick["corr"] if stick["corr"] > 0 else float("nan")
        by_steps[label] = figures
    default = by_steps.get(default_label) or next(iter(by_steps.values()))
    return {"recordings": [str(path) for path in settings.human_voice], "reference": str(settings.reference),
            "pause_s": settings.pause_s, "seconds": seconds, "by_steps": by_steps, "yardstick": stick,
            "ratio_to_yardstick": default["ratio_to_yardstick"], "video": str(settings.save_video) if settings.save_video else None}
