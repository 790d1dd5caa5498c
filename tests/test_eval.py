"""Evaluation: frame-level metrics behave as a person would judge, and `omnilive eval --json` runs end to end."""

from __future__ import annotations

import json
import math
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from model.data import format as fmt
from model.data import keypoints as kp
from model.pipeline import AvatarPipeline
from model.train.evaluate import HeldoutClip, frame_pauses, join_recordings, stream_figures
from model.train.metrics import (
    appearance_similarity,
    loudness_envelope,
    mouth_box,
    mouth_box_at,
    mouth_change,
    mouth_openness,
    pearson,
    seam_ratio,
    silence_ratio,
    silent_mask,
    stillness,
    voice_figures,
)
from omnilive_cli.main import main
from test_train_toyset import make_toy_dataset

SMALL_MODEL = """
dit: {hidden_size: 32, depth: 2, num_heads: 2, patch_size: 2, mlp_ratio: 2.0, pose_channels: 5}
vae: {latent_channels: 4, encoder_block_out_channels: [8, 8, 8, 8], decoder_block_out_channels: [8, 8, 8, 8]}
sampler: {chunk_frames: 2, context_frames: 2, steps: 1}
video: {height: 64, width: 64}
"""


def test_mouth_openness_follows_the_drawn_mouth(tmp_path: Path) -> None:
    """Dark-pixel openness in the lip box correlates with the ground-truth openness of the toy faces."""
    root = make_toy_dataset(tmp_path / "toy", clips=1, frames=40)
    clip = fmt.load_clip(root, "toy000")
    boxes = [mouth_box(clip.keypoints.xy[t, kp.LIPS], 64, 64) for t in range(40)]
    measured = mouth_openness(clip.frames, boxes)
    assert pearson(clip.keypoints.mouth_open, measured) > 0.8
    shuffled = measured[np.random.default_rng(1).permutation(40)]
    assert pearson(clip.keypoints.mouth_open, shuffled) < 0.5  # a mouth out of sync does not pass


def test_seam_silence_and_similarity_figures() -> None:
    """Jumps at chunk boundaries raise the seam ratio; an open mouth in silence raises the silence ratio."""
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(0, 1, (24, 8, 8, 3)), axis=0) + 128
    assert seam_ratio(smooth, 4) == pytest.approx(1.0, abs=0.3)
    jumpy = smooth.copy()
    for start in range(4, 24, 4):
        jumpy[start:] += 20
    assert seam_ratio(jumpy, 4) > 3
    speaking = np.array([True] * 10 + [False] * 10)
    assert silence_ratio(np.r_[np.full(10, 0.3), np.full(10, 0.01)], speaking) < 0.1
    assert silence_ratio(np.full(20, 0.3), speaking) == pytest.approx(1.0)
    closed_lips = 0.15  # the frame measure reads shut lips as a constant: the ratio counts what is above it
    assert silence_ratio(np.r_[np.full(10, 0.25), np.full(10, closed_lips)], speaking) < 0.05
    assert silence_ratio(np.r_[np.full(10, 0.25), np.full(9, 0.25), [closed_lips]], speaking) == pytest.approx(1.0)
    image = rng.integers(0, 255, (16, 16, 3)).astype(np.uint8)
    assert appearance_similarity(np.stack([image] * 3), image) > 0.95
    assert appearance_similarity(np.stack([255 - image] * 3), image) < appearance_similarity(np.stack([image] * 3), image)


def _speech_envelope(frames: int, seed: int = 0) -> np.ndarray:
    """A loudness envelope [frames]: syllable-like bursts of varying strength with pauses between words."""
    rng = np.random.default_rng(seed)
    envelope = np.zeros(frames)
    t = 5
    while t < frames - 10:
        word = int(rng.integers(8, 20))
        syllables = np.abs(np.sin(np.arange(word) * rng.uniform(0.6, 1.2))) * rng.uniform(0.3, 1.0)
        envelope[t:t + word] = syllables[: frames - t]
        t += word + int(rng.integers(10, 16))
    return envelope


def _face_video(openness: np.ndarray, size: int = 48) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Skin-coloured frames [T, size, size, 3] whose mouth (a dark slit at (0.5, 0.7)) opens with `openness`."""
    box = mouth_box_at(0.5, 0.7, 0.3, size, size)
    video = np.full((len(openness), size, size, 3), (210, 160, 130), np.uint8)
    cx, cy, half_w = size // 2, int(0.7 * size), int(0.15 * size)
    for t, value in enumerate(np.clip(openness, 0, 1)):
        half_h = 1 + int(round(value * 4))
        video[t, cy - half_h:cy + half_h, cx - half_w:cx + half_w] = (60, 20, 25)
    return video, box


def test_human_voice_figure_follows_the_loudness() -> None:
    """A mouth box that darkens with the loudness scores high at lag 0 (and finds a 2-frame delay); a still mouth ~0."""
    envelope = _speech_envelope(200)
    audio = np.repeat(envelope, 640) * np.sin(np.arange(200 * 640) * 0.2)
    loudness = loudness_envelope(audio, 640)
    assert loudness.shape == (200,) and pearson(loudness, envelope) > 0.95
    video, box = _face_video(envelope)
    figures = voice_figures(mouth_openness(video, [box] * len(video)), loudness)
    assert figures["corr"] > 0.9 and figures["lag"] == 0
    assert figures["open_speaking"] > 1.5 * figures["open_silent"]
    late, _ = _face_video(np.r_[np.zeros(2), envelope[:-2]])  # the mouth follows the voice 2 frames late
    delayed = voice_figures(mouth_openness(late, [box] * len(late)), loudness)
    assert delayed["lag"] == 2 and delayed["corr"] > 0.9
    still, _ = _face_video(np.full(200, 0.3))
    static = voice_figures(mouth_openness(still, [box] * len(still)), loudness)
    assert abs(static["corr"]) < 0.1
    noisy = np.random.default_rng(3).integers(0, 255, still.shape).astype(np.uint8)
    assert abs(voice_figures(mouth_openness(noisy, [box] * len(noisy)), loudness)["corr"]) < 0.35
    shut = _face_video(np.zeros(1))[0][0]  # the avatar's still image: mouth closed
    assert voice_figures(mouth_change(video, shut, box), loudness)["corr"] > 0.9
    assert abs(voice_figures(mouth_change(still, shut, box), loudness)["corr"]) < 0.1


def _write_wav(path: Path, seconds: float, rate: int = 48000, seed: int = 0) -> None:
    """A 16-bit mono wav of a voice-like tone whose loudness rises and falls like syllables."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    signal = 0.4 * np.abs(np.sin(2 * np.pi * 3 * t)) * np.sin(2 * np.pi * rng.uniform(120, 220) * t)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((signal * 32767).astype("<i2").tobytes())


def test_recordings_are_joined_with_pauses(tmp_path: Path) -> None:
    """48 kHz recordings come back at 16 kHz, each followed by its pause; pause frames are trimmed at the edges."""
    for index in range(2):
        _write_wav(tmp_path / f"r{index}.wav", 0.4, seed=index)  # 6,400 samples at 16 kHz = 10 frames
    audio, pauses = join_recordings(sorted(tmp_path.glob("*.wav")), 16000, 1.0)
    assert len(audio) == 2 * (6400 + 16000) and pauses.sum() == 2 * 16000
    frames = -(-len(audio) // 640)
    silent = frame_pauses(pauses, 640, frames)
    assert silent.sum() == 2 * (25 - 2 * 3)  # two 25-frame pauses, 3 frames trimmed at each end
    assert not silent[:13].any() and silent[13:32].all()  # the first recording's frames


def test_stillness_and_similarity_of_ground_truth_against_itself() -> None:
    """Ground truth scored as if generated: stillness_ratio and similarity_ratio are 1; a jittery silence is > 1."""
    rng = np.random.default_rng(0)
    frames = 40
    mouth = np.r_[np.abs(np.sin(np.arange(20) * 0.7)), np.zeros(20)]  # speech, then 20 silent frames
    video = np.clip(np.cumsum(rng.normal(0, 2, (frames, 32, 32, 3)), axis=0) + 128, 0, 255).astype(np.uint8)
    lips = np.tile(np.array([[0.4, 0.7], [0.6, 0.7], [0.5, 0.68], [0.5, 0.72]]), (frames, 1, 1))
    clip = HeldoutClip(id="c", framing="face", caption="", frames=video, audio=np.zeros(frames * 640, np.float32),
                       xy=np.zeros((frames, kp.NUM_KEYPOINTS, 2)), visibility=np.ones((frames, kp.NUM_KEYPOINTS)),
                       mouth_open=mouth.astype(np.float32), boxes=[mouth_box(lips[t], 32, 32) for t in range(frames)])
    truth = stream_figures(clip, video, chunk_frames=4, measure=mouth_openness)
    assert truth["stillness_ratio"] == pytest.approx(1.0) and truth["similarity_ratio"] == pytest.approx(1.0)
    silent = silent_mask(clip.speaking)
    assert silent.sum() == 20 - 2 * 3 and stillness(video, silent) > 0
    jittery = video.copy()
    jittery[silent] = rng.integers(0, 255, jittery[silent].shape)
    assert stream_figures(clip, jittery, chunk_frames=4, measure=mouth_openness)["stillness_ratio"] > 1.5


def test_eval_command_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`omnilive eval --json` on held-out toy clips: one JSON object with the issue's figures."""
    torch.set_num_threads(1)
    root = make_toy_dataset(tmp_path / "toy", clips=2, frames=24)
    model = tmp_path / "small.yaml"
    model.write_text(SMALL_MODEL)
    AvatarPipeline.from_config(model).save_pretrained(tmp_path / "ckpt")
    voices = tmp_path / "voices"
    voices.mkdir()
    for index in range(2):
        _write_wav(voices / f"v{index}.wav", 0.6, seed=index)
    reference = tmp_path / "ref.png"
    from PIL import Image
    Image.fromarray(fmt.load_clip(root, "toy001").frames[0]).save(reference)
    code = main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(root), "--split", "val", "--clips", "1",
                 "--framing", "face", "--sweep-steps", "1", "--sweep-cfg", "1,2", "--drift-minutes", "0.02", "--no-vad",
                 "--steps-list", "DEFAULT,2", "--human-voice", str(voices), "--reference", str(reference), "--pause-s", "0.5",
                 "--save-video", str(tmp_path / "voice.mp4"), "--dark-pixels", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["lip_measure"] == "dark pixels"
    for key in ("lipsync_corr", "metric_validity", "lipsync_vae_ceiling", "silence_ratio", "psnr", "ssim", "seam_ratio", "motion_ratio"):
        assert key in result
    for key in ("similarity_ref", "similarity_ref_truth", "similarity_ratio", "stillness_ratio"):
        assert math.isfinite(result[key]), key
    assert set(result["by_steps"]) == {"1", "2"}  # the small model's default is 1 step
    for figures in result["by_steps"].values():
        for key in ("lipsync_corr", "silence_ratio", "open_speaking", "open_silent", "seam_ratio", "stillness_ratio",
                    "similarity_ref", "similarity_ratio"):
            assert key in figures and math.isfinite(figures[key]), key
    voice = result["human_voice"]
    assert voice["recordings"] == [str(voices / "v0.wav"), str(voices / "v1.wav")] and voice["seconds"] == pytest.approx(2.2, abs=0.05)
    assert set(voice["by_steps"]) == {"1", "2"}
    for figures in voice["by_steps"].values():
        assert {"corr", "lag", "open_speaking", "open_silent"} <= set(figures) and abs(figures["lag"]) <= 2
        assert all(math.isfinite(figures[key]) for key in ("corr", "open_speaking", "open_silent"))
    assert voice["yardstick"]["corr"] > 0.5 and "ratio_to_yardstick" in voice  # toy ground truth: mouth follows loudness
    assert (tmp_path / "voice.mp4").stat().st_size > 0
    assert result["metric_validity"] > 0.8 and result["psnr"] > 0
    assert [(r["steps"], r["audio_cfg"]) for r in result["sweep"]] == [(1, 1.0), (1, 2.0)]
    assert result["drift"]["similarity_start"] > 0 and "ratio" in result["drift"]
    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(root), "--split", "val",
                 "--framing", "full_body"]) == 2  # no such clips: a clear error
    assert "full_body" in capsys.readouterr().err


def test_eval_bad_paths_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A missing checkpoint folder -> exit 2 and a one-line message."""
    assert main(["eval", "--checkpoint", str(tmp_path / "nope"), "--data", str(tmp_path)]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err
