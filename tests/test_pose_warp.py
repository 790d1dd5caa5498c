"""Pose-driven head motion: the decoded frame follows the pose's head keypoints; the background stays put."""

from __future__ import annotations

import numpy as np
import pytest

from model.conditioning.mouth import MouthBox
from model.data import keypoints as kp
from model.media import load_image
from model.pipeline import DEFAULT_CHECKPOINT, AvatarPipeline
from model.pose_warp import BORDER, CONTROL_POINTS, LIP_CORNERS, PoseWarp, tps_grid, warp_frames
from model.train.evaluate import DEFAULT_REFERENCE
from pipeline_helpers import dot_centre, dot_image, with_guide

SIZE = 64


def _pose(shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """A face pose [K, 3]: control points on two rings around (0.5, 0.45) (outline and features), lips at
    y = 0.6, the rest hidden."""
    pose = np.zeros((kp.NUM_KEYPOINTS, 3), np.float32)
    angles = np.linspace(0, 2 * np.pi, len(CONTROL_POINTS), endpoint=False)
    radii = np.where(np.arange(len(CONTROL_POINTS)) % 2 == 0, 0.15, 0.06)
    centre = np.array([0.5, 0.45])
    pose[CONTROL_POINTS, :2] = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1) + shift
    pose[CONTROL_POINTS, 2] = 1.0
    pose[LIP_CORNERS[0]] = (0.44 + shift[0], 0.6 + shift[1], 1.0)
    pose[LIP_CORNERS[1]] = (0.56 + shift[0], 0.6 + shift[1], 1.0)
    return pose


def _dot_image() -> np.ndarray:
    """The dot at the pose's centre."""
    return dot_image(SIZE, 30, 27)  # around (0.5, 0.45)


def test_the_same_points_warp_nothing() -> None:
    """A spline from the anchor to itself is the identity: the frame comes back unchanged."""
    frames = _dot_image()
    grid = tps_grid(BORDER, BORDER, SIZE, SIZE)[None]
    assert np.abs(warp_frames(frames, grid).astype(int) - frames).max() <= 1


def test_the_head_follows_the_pose_and_the_border_stays() -> None:
    """A pose moved 6 px right and 3 px down moves the head's dot by that much; the image corner stays."""
    warp = PoseWarp(_pose(), SIZE, SIZE)
    grid = warp.grid(_pose(shift=(6 / SIZE, 3 / SIZE)))
    assert grid is not None
    moved = warp_frames(_dot_image(), grid[None])[0]
    shift = dot_centre(moved) - dot_centre(_dot_image()[0])
    assert shift == pytest.approx([6.0, 3.0], abs=1.0)
    assert moved[:2, :2].max() < 40  # the black corner did not move


def test_a_pose_elsewhere_is_aligned_to_the_avatar_by_its_lips() -> None:
    """A driving face twice as large and elsewhere moves the avatar's head by the motion scaled to the avatar."""
    mouth = MouthBox(x=0.5, y=0.6, width=0.12)  # the avatar's lips: where _pose() puts them
    big = _pose(shift=(0.1, 0.05))
    big[:, :2] = (big[:, :2] - [0.6, 0.65]) * 2 + [0.6, 0.65]  # the whole face twice as large, elsewhere
    warp = PoseWarp(big, SIZE, SIZE, mouth)
    moved_pose = big.copy()
    moved_pose[:, 0] += 12 / SIZE  # 12 px of the driving face = 6 px of the avatar
    grid = warp.grid(moved_pose)
    assert grid is not None
    shift = dot_centre(warp_frames(_dot_image(), grid[None])[0]) - dot_centre(_dot_image()[0])
    assert shift == pytest.approx([6.0, 0.0], abs=1.0)


def test_too_few_visible_points_do_not_warp() -> None:
    """A pose with its head hidden leaves the frame as it is (no grid), and `grids` holds identity for it."""
    warp = PoseWarp(_pose(), SIZE, SIZE)
    hidden = _pose()
    hidden[:, 2] = 0
    assert warp.grid(hidden) is None
    assert warp.grids(hidden[None]) is None
    grids = warp.grids(np.stack([hidden, _pose(shift=(0.05, 0))]))
    assert grids is not None and grids.shape == (2, SIZE, SIZE, 2)


@pytest.fixture(scope="module")
def tiny() -> AvatarPipeline:
    """weights/tiny without its own motion (no sway, no blinks): what moves is the pose's doing."""
    return with_guide(AvatarPipeline.from_pretrained(DEFAULT_CHECKPOINT), head_motion=False, blinks=False)


def _avatar_pose(pipe: AvatarPipeline, image: np.ndarray, shift_px: float) -> np.ndarray:
    """A pose whose lips sit on the avatar's mouth, moved `shift_px` pixels to the right."""
    box = pipe.encode_reference(image).mouth_bank.box  # type: ignore[union-attr]
    return _pose(shift=(box.x - 0.5 + shift_px / pipe.config.width, box.y - 0.6))


def test_a_stream_with_a_pose_moves_the_avatars_head(tiny: AvatarPipeline) -> None:
    """weights/tiny: setting a pose moved right shifts the generated face right; None brings it back."""
    image = load_image(DEFAULT_REFERENCE)
    features = tiny.encode_reference(image)
    stream = tiny.open_stream(features)
    audio = np.zeros(tiny.config.samples_per_frame * 12, np.float32)  # silence: the still avatar
    stream.push_audio(audio, voiced=False)
    still = tiny.generate([stream])[0].frames[0].astype(np.float32)
    stream.set_pose(_avatar_pose(tiny, image, 0.0))
    stream.set_pose(_avatar_pose(tiny, image, 4.0))
    moved = tiny.generate([stream])[0].frames[0].astype(np.float32)
    stream.set_pose(None)
    back = tiny.generate([stream])[0].frames[0].astype(np.float32)
    stream.close()
    expected = 4.0 * features.mouth_bank.box.width / 0.12  # type: ignore[union-attr]  # the pose's lips are 0.12 wide
    face = (slice(40, 90), slice(30, 98))
    errors = {dx: np.abs(moved[face] - np.roll(still, dx, axis=1)[face]).mean() for dx in range(-10, 11)}
    best = min(errors, key=errors.__getitem__)
    assert abs(best - expected) <= 1.5 and errors[best] < 0.5 * errors[0]
    assert np.abs(back - still).mean() < 1.0
