"""Keypoint heatmaps: one channel per group, peaks at the keypoints, nothing for invisible points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.conditioning.heatmaps import HEATMAP_CHANNEL_NAMES, NUM_HEATMAP_CHANNELS, render_heatmaps
from model.data import keypoints as kp


def _pose(rng: np.random.Generator, frames: int = 3) -> tuple[np.ndarray, np.ndarray]:
    xy = rng.uniform(0.05, 0.95, (frames, kp.NUM_KEYPOINTS, 2)).astype(np.float32)
    return xy, np.ones((frames, kp.NUM_KEYPOINTS), np.float32)


def test_channels_are_the_keypoint_groups() -> None:
    assert NUM_HEATMAP_CHANNELS == kp.NUM_GROUPS == 5
    assert HEATMAP_CHANNEL_NAMES == ("body", "left_hand", "right_hand", "face", "lips")
    members = kp.group_matrix()
    assert members.sum() == kp.NUM_KEYPOINTS and (members.sum(axis=0) == 1).all()


@pytest.mark.parametrize("height,width", [(16, 16), (32, 24), (20, 36)])
def test_single_keypoint_peaks_at_its_pixel(height: int, width: int) -> None:
    rng = np.random.default_rng(height * width)
    xy, _ = _pose(rng, 1)
    visibility = np.zeros((1, kp.NUM_KEYPOINTS), np.float32)
    nose, wrist, lip = kp.index("body.nose"), kp.index("left_hand.wrist"), kp.index("face.inner_lip_2")
    visibility[0, [nose, wrist, lip]] = 1.0
    maps = render_heatmaps(xy, visibility, height, width)
    assert maps.shape == (1, NUM_HEATMAP_CHANNELS, height, width)
    for channel, index in ((0, nose), (1, wrist), (4, lip)):
        peak = int(maps[0, channel].argmax())
        py, px = divmod(peak, width)
        x, y = xy[0, index]
        assert (px, py) == (min(int(x * width), width - 1), min(int(y * height), height - 1))
        assert maps[0, channel].max() > 0.6
    assert maps[0, 2].max() == 0 and maps[0, 3].max() == 0      # no visible right-hand / face points


def test_every_visible_keypoint_is_a_local_maximum_above_background() -> None:
    xy, vis = _pose(np.random.default_rng(1), 2)
    maps = render_heatmaps(torch.from_numpy(xy), torch.from_numpy(vis), 64, 64, sigma=1.0)
    for t in range(2):
        for g, group in enumerate(kp.HEATMAP_GROUPS):
            for i in group.indices:
                px, py = (np.minimum((xy[t, i] * 64).astype(int), 63))
                assert maps[t, g, py, px] > 0.6
    assert maps.min() >= 0 and maps.max() <= 1


def test_invisible_and_nan_keypoints_draw_nothing_and_shapes_batch() -> None:
    xy, vis = _pose(np.random.default_rng(2), 4)
    vis[:] = 0
    xy[1] = np.nan
    vis[1] = 1.0
    maps = render_heatmaps(xy[None], vis[None], 8, 12)
    assert maps.shape == (1, 4, NUM_HEATMAP_CHANNELS, 8, 12) and float(maps.abs().sum()) == 0.0
    with pytest.raises(ValueError):
        render_heatmaps(np.zeros((2, 10, 2)), None, 8, 8)
