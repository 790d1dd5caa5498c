"""The committed default checkpoint (weights/tiny): small, documented, loads offline and animates a person."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from model.pipeline import DEFAULT_CHECKPOINT, AvatarPipeline
from model.media import load_image

ROOT = Path(__file__).resolve().parent.parent
AVATAR = ROOT / "avatar_server" / "assets" / "default_avatar.png"
MAX_BYTES = 8 * 1024 * 1024


def test_default_weights_are_small_and_documented() -> None:
    """safetensors only, a few MB in all, a model card with the figures, the training record."""
    files = [p for p in DEFAULT_CHECKPOINT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < MAX_BYTES
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".md"}
    card = (DEFAULT_CHECKPOINT / "MODEL_CARD.md").read_text()
    for words in ("Data", "Steps", "Wall time", "Hardware", "Evaluation", "Limits", "stylized"):
        assert words.lower() in card.lower(), words
    record = json.loads((DEFAULT_CHECKPOINT / "training.json").read_text())
    assert record["steps_trained"] > 0 and record["weights"] == "ema"


def test_default_weights_load_and_render_frames() -> None:
    """from_pretrained(weights/tiny) renders one second of speech into changing frames of the avatar."""
    torch.set_num_threads(1)
    pipe = AvatarPipeline.from_pretrained(DEFAULT_CHECKPOINT)
    t = np.arange(16000) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)
    image = load_image(AVATAR)
    frames = pipe.render(image, speech, text="a person talking", seed=0)
    assert frames.shape == (25, pipe.config.height, pipe.config.width, 3) and frames.dtype == np.uint8
    assert frames.std() > 10  # an image, not a flat colour
    assert np.abs(np.diff(frames.astype(np.float32), axis=0)).mean() > 0.05  # it moves
    reference = np.asarray(image.resize((pipe.config.width, pipe.config.height))).astype(np.float32)
    colour_error = np.abs(frames.astype(np.float32).mean(axis=(0, 1, 2)) - reference.mean(axis=(0, 1)))
    assert colour_error.max() < 60  # the avatar's palette, not a random-init image
