"""Blinks: the default avatar's eyes are found and shut every few seconds, the mouth untouched; no eyes, no blink."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.blinks import EVERY_S, FIRST_S, PROFILE, BlinkSchedule, close_eyes, locate_eyes
from model.conditioning.mouth import MouthBox
from model.media import load_image
from model.pipeline import AvatarPipeline
from pipeline_helpers import with_guide

ROOT = Path(__file__).resolve().parent.parent
AVATAR = ROOT / "avatar_server" / "assets" / "default_avatar.png"
WEIGHTS = ROOT / "weights" / "tiny"


def _default_avatar(pipe: AvatarPipeline):
    return pipe.encode_reference(load_image(AVATAR))


def test_eyes_of_the_default_avatar_are_found_and_shut_in_place() -> None:
    """Two eyes above the mouth, level and mirrored about it; shutting them changes only pixels around them."""
    torch.set_num_threads(1)
    pipe = AvatarPipeline.from_pretrained(WEIGHTS)
    features = _default_avatar(pipe)
    box = features.mouth_bank.box
    eyes = locate_eyes(features.image, box)
    assert eyes is not None
    left, right = eyes
    mouth_x, mouth_y = box.x * features.width, box.y * features.height
    assert abs(left.y - right.y) <= 2 and max(left.y, right.y) < mouth_y - 2 * left.height
    assert abs((left.x + right.x) / 2 - mouth_x) < 3 and right.x - left.x > left.width
    shut = close_eyes(features.image, eyes)
    changed = np.abs(shut.astype(int) - features.image.astype(int)).sum(-1) > 0  # [H, W]
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 40
    assert ys.min() >= left.y - left.height and ys.max() <= left.y + left.height
    assert xs.min() >= left.x - left.width and xs.max() <= right.x + right.width


def test_a_picture_without_eyes_does_not_blink() -> None:
    """A flat face (no contrast where the eyes should be) gives no eyes."""
    flat = np.full((128, 128, 3), 200, dtype=np.uint8)
    flat[85:95, 50:75] = (150, 60, 60)  # a mouth and nothing else
    assert locate_eyes(flat, MouthBox(x=0.49, y=0.7, width=0.2)) is None


def test_blink_schedule_is_deterministic_and_the_same_however_chunked() -> None:
    """Per seed the same blinks whether asked in one piece or 2-frame chunks; spaced as configured."""
    fps, frames = 25, 25 * 40
    whole = BlinkSchedule(seed=7, fps=fps).closedness(0, frames).numpy()
    chunked = BlinkSchedule(seed=7, fps=fps)
    pieces = np.concatenate([chunked.closedness(i, 2).numpy() for i in range(0, frames, 2)])
    assert np.array_equal(whole, pieces)
    assert not np.array_equal(whole, BlinkSchedule(seed=8, fps=fps).closedness(0, frames).numpy())
    starts = np.flatnonzero(whole == PROFILE[0])  # each blink's first frame
    assert FIRST_S[0] * fps <= starts[0] <= FIRST_S[1] * fps
    gaps = np.diff(starts) / fps
    assert len(gaps) >= 6 and gaps.min() >= EVERY_S[0] - 0.05 and gaps.max() <= EVERY_S[1] + 0.05
    assert whole.max() == 1.0 and whole.min() == 0.0


def test_the_default_avatar_blinks_in_silence_and_keeps_its_mouth_shut() -> None:
    """8 s of silence: the eyes shut in short runs every few seconds; the mouth stays as the still frame."""
    torch.set_num_threads(1)
    pipe = with_guide(AvatarPipeline.from_pretrained(WEIGHTS), head_motion=False)  # the eyes, not the sway
    features = _default_avatar(pipe)
    assert features.blink is not None
    frames = pipe.render(load_image(AVATAR), np.zeros(16000 * 8, np.float32), seed=0)
    left, right = features.blink.eyes
    eyes = (slice(int(left.y - left.height), int(left.y + left.height)), slice(int(left.x - left.width), int(right.x + right.width)))
    eye_change = np.abs(frames[:, eyes[0], eyes[1]].astype(float) - features.still[eyes[0], eyes[1]]).mean(axis=(1, 2, 3))
    shut = eye_change > 3
    runs = np.flatnonzero(np.diff(np.r_[0, shut.astype(int)]) == 1)
    assert 2 <= len(runs) <= 5 and shut.sum() <= len(runs) * len(PROFILE)
    box = features.mouth_bank.box
    mx, my, mw = int(box.x * 128), int(box.y * 128), int(box.width * 128)
    mouth = (slice(my - mw // 4, my + mw // 4), slice(mx - mw // 2, mx + mw // 2))
    mouth_change = np.abs(frames[:, mouth[0], mouth[1]].astype(float) - features.still[mouth[0], mouth[1]]).mean(axis=(1, 2, 3))
    assert mouth_change.max() < 3 < eye_change.max()
