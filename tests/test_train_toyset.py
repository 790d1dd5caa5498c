"""A tiny talking-face dataset in the real dataset format, for fast hermetic training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model.data import format as fmt
from model.data import keypoints as kp

SIZE = 64


def _frame(rng_colour: np.ndarray, openness: float, sway: float) -> tuple[np.ndarray, np.ndarray]:
    """One frame: a face whose mouth opens by `openness`; returns (uint8 [S, S, 3], keypoints xy [K, 2])."""
    image = Image.new("RGB", (SIZE, SIZE), tuple(int(c) for c in rng_colour[0]))
    draw = ImageDraw.Draw(image)
    cx, cy = SIZE / 2 + sway, SIZE / 2
    draw.ellipse([cx - 20, cy - 24, cx + 20, cy + 22], fill=tuple(int(c) for c in rng_colour[1]))
    for ex in (cx - 8, cx + 8):
        draw.ellipse([ex - 3, cy - 10, ex + 3, cy - 5], fill=(20, 20, 30))
    mouth_h = 1 + 9 * openness
    draw.ellipse([cx - 8, cy + 8 - mouth_h / 2, cx + 8, cy + 8 + mouth_h / 2], fill=(150, 40, 50))
    if openness > 0.15:
        draw.ellipse([cx - 6, cy + 8 - mouth_h / 2 + 1, cx + 6, cy + 8 + mouth_h / 2 - 1], fill=(25, 5, 10))
    xy = np.tile(np.array([[cx, cy]], dtype=np.float32), (kp.NUM_KEYPOINTS, 1))
    angles = np.linspace(0, 2 * np.pi, kp.LIPS.stop - kp.LIPS.start, endpoint=False)
    xy[kp.LIPS] = np.stack([cx + 8 * np.cos(angles), cy + 8 + mouth_h / 2 * np.sin(angles)], axis=1)
    xy[kp.LEFT_HAND] = [cx - 26, cy + 28]
    xy[kp.RIGHT_HAND] = [cx + 26, cy + 28]
    return np.asarray(image), xy / SIZE


def make_toy_dataset(root: Path, clips: int = 4, frames: int = 40, seed: int = 0) -> Path:
    """Write `clips` clips (first ones train, last one val) with speech-like audio driving the mouth."""
    rng = np.random.default_rng(seed)
    entries = []
    for c in range(clips):
        clip_id = f"toy{c:03d}"
        path = fmt.clip_dir(root, clip_id)
        path.mkdir(parents=True, exist_ok=True)
        colours = rng.integers(40, 220, size=(2, 3))
        envelope = np.clip(np.sin(np.arange(frames) * rng.uniform(0.3, 0.6) + rng.uniform(0, 6)), 0, 1)
        envelope[rng.integers(0, frames - 8):][:8] = 0.0  # a silent stretch
        video, xys = [], []
        for t in range(frames):
            frame, xy = _frame(colours, float(envelope[t]), 2 * np.sin(t / 7))
            video.append(frame)
            xys.append(xy)
        with fmt.VideoWriter(path / fmt.VIDEO_FILE, SIZE, SIZE) as writer:
            for frame in video:
                writer.write(frame)
        time = np.arange(frames * fmt.SAMPLES_PER_FRAME) / fmt.SAMPLE_RATE
        amplitude = np.repeat(envelope, fmt.SAMPLES_PER_FRAME)
        audio = 0.5 * amplitude * np.sin(2 * np.pi * (180 + 60 * c) * time) + 0.002 * rng.standard_normal(len(time))
        fmt.write_audio(path / fmt.AUDIO_FILE, audio)
        fmt.write_keypoints(path / fmt.KEYPOINTS_FILE, fmt.Keypoints(
            xy=np.stack(xys).astype(np.float32), visibility=np.ones((frames, kp.NUM_KEYPOINTS), np.float32),
            mouth_open=envelope.astype(np.float32)))
        split = "val" if c == clips - 1 else "train"
        meta = fmt.ClipMeta(
            id=clip_id, caption="a person talking", identity=f"id{c}", framing="face", aspect="1:1", fps=fmt.FPS,
            width=SIZE, height=SIZE, frames=frames, duration_s=frames / fmt.FPS, source="studio", split=split,
            flags=fmt.QualityFlags(audio_present=True, has_speech=True, speech_ratio=float((envelope > 0.1).mean()),
                                   motion=0.01, has_pose=True, conditions=list(fmt.CONDITIONS)),
        )
        fmt.write_meta(path, meta)
        entries.append(fmt.index_entry(meta))
    fmt.write_index(root, fmt.DatasetIndex(clips=entries))
    return root


def test_toy_dataset_reads_back(tmp_path: Path) -> None:
    """The toy clips are valid dataset clips: frames, audio and keypoints line up."""
    root = make_toy_dataset(tmp_path / "toy", clips=2, frames=10)
    clip = fmt.load_clip(root, fmt.read_index(root).clips[0].id)
    assert clip.frames.shape == (10, SIZE, SIZE, 3)
    assert clip.audio is not None and len(clip.audio) == 10 * fmt.SAMPLES_PER_FRAME
    assert clip.keypoints is not None and clip.keypoints.xy.shape == (10, kp.NUM_KEYPOINTS, 2)
