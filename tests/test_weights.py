"""The committed default checkpoint (weights/tiny): small, documented, loads offline and animates a person."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from model.media import load_audio, load_image
from model.pipeline import DEFAULT_CHECKPOINT, AvatarPipeline
from pipeline_helpers import with_guide

ROOT = Path(__file__).resolve().parent.parent
AVATAR = ROOT / "avatar_server" / "assets" / "default_avatar.png"
MAX_BYTES = 8 * 1024 * 1024
HUMAN_VOICE = Path("/usr/share/sounds/alsa/Front_Center.wav")  # alsa-utils (scripts/setup.sh installs it)


def test_default_weights_are_small_and_documented() -> None:
    """safetensors only, a few MB in all, a model card with the figures, the training record."""
    files = [p for p in DEFAULT_CHECKPOINT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < MAX_BYTES
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".md"}
    card = (DEFAULT_CHECKPOINT / "MODEL_CARD.md").read_text()
    for words in ("Data", "Steps", "Wall time", "Hardware", "Evaluation", "Limits", "stylized"):
        assert words.lower() in card.lower(), words
    record = json.loads((DEFAULT_CHECKPOINT / "training.json").read_text())
    assert record["weights"] == "ema" and record["train_config"]["kind"] == "dit"  # the recipe that made it
    assert record["motion"]["heldout_r"] > 0.9  # the audio->motion model's held-out figure travels with it


def test_default_weights_load_and_render_frames() -> None:
    """from_pretrained(weights/tiny) renders one second of recorded speech into changing frames of the avatar."""
    torch.set_num_threads(1)
    pipe = AvatarPipeline.from_pretrained(DEFAULT_CHECKPOINT)
    speech = load_audio(HUMAN_VOICE, pipe.config.sample_rate)[: pipe.config.sample_rate]
    image = load_image(AVATAR)
    frames = pipe.render(image, speech, text="a person talking", seed=0)
    assert frames.shape == (25, pipe.config.height, pipe.config.width, 3) and frames.dtype == np.uint8
    assert frames.std() > 10  # an image, not a flat colour
    assert np.abs(np.diff(frames.astype(np.float32), axis=0)).mean() > 0.05  # it moves
    reference = np.asarray(image.resize((pipe.config.width, pipe.config.height))).astype(np.float32)
    colour_error = np.abs(frames.astype(np.float32).mean(axis=(0, 1, 2)) - reference.mean(axis=(0, 1)))
    assert colour_error.max() < 60  # the avatar's palette, not a random-init image


def test_default_avatar_opens_its_mouth_for_a_human_voice_and_shuts_it_in_silence() -> None:
    """A recorded human voice, then silence: the predicted openness and the drawn mouth (pixel change in the
    avatar's mouth box against the shut mouth) are open while it speaks and shut once it is silent."""
    torch.set_num_threads(1)
    pipe = with_guide(AvatarPipeline.from_pretrained(DEFAULT_CHECKPOINT), head_motion=False)  # the mouth, not the sway
    assert pipe.guided and pipe.motion is not None and pipe.locator is not None
    voice = load_audio(HUMAN_VOICE, pipe.config.sample_rate)[: pipe.config.sample_rate]  # the first second
    audio = np.concatenate([np.zeros(8000, np.float32), voice, np.zeros(pipe.config.sample_rate, np.float32)])
    reference = pipe.encode_reference(load_image(AVATAR))
    stream = pipe.open_stream(reference)
    frames, opening = [], []
    spf = pipe.config.samples_per_frame
    padded = np.concatenate([audio, np.zeros(spf * 4, np.float32)])
    for start in range(0, len(padded), spf):
        stream.push_audio(padded[start:start + spf], voiced=bool(np.abs(padded[start:start + spf]).max() > 1e-3))
    while stream.ready() and stream.frame_index < len(audio) // spf:
        chunk = pipe.generate([stream])[0]
        frames.append(chunk.frames)
        opening.append(chunk.mouth_open)
    stream.close()
    frames, opening = np.concatenate(frames).astype(np.float32), np.concatenate(opening)
    box = reference.mouth_bank.box  # the mouth (between the lips and below), in pixels of the output frame
    height, width = frames.shape[1:3]
    x0, x1 = int((box.x - box.width / 2) * width), int((box.x + box.width / 2) * width)
    y0, y1 = int(box.y * height), int((box.y + 0.6 * box.width) * height)
    change = np.abs(frames[:, y0:y1, x0:x1] - frames[-1, y0:y1, x0:x1]).mean(axis=(1, 2, 3))  # vs the shut mouth
    speech, silence = slice(14, 41), slice(len(frames) - 15, len(frames))  # the two words; the last 0.6 s
    assert np.percentile(opening[speech], 75) > 0.3 and np.median(opening[silence]) < 0.05
    assert np.percentile(change[speech], 75) > 8.0 and np.median(change[silence]) < 2.0
