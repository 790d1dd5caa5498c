"""Keypoints -> heatmap channels, one per keypoint group (shared by the studio, prep and the pose guider).

Each channel is the max over its group's visible keypoints of a Gaussian bump (peak 1 at the
keypoint, `sigma` in heatmap pixels). Keypoints are (x, y) in [0, 1] image coordinates; NaN or
invisible keypoints draw nothing.
"""

from __future__ import annotations

import numpy as np
import torch

from model.data.keypoints import HEATMAP_GROUPS, NUM_GROUPS, NUM_KEYPOINTS

NUM_HEATMAP_CHANNELS: int = NUM_GROUPS                       # G: body, left hand, right hand, face, lips
HEATMAP_CHANNEL_NAMES: tuple[str, ...] = tuple(g.name for g in HEATMAP_GROUPS)
DEFAULT_SIGMA: float = 1.0                                   # Gaussian std in heatmap pixels


def render_heatmaps(xy: torch.Tensor | np.ndarray, visibility: torch.Tensor | np.ndarray | None, height: int,
                    width: int, sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """Heatmaps [..., G, height, width] (float32, 0..1) from keypoints [..., K, 2] and visibility [..., K]."""
    xy = torch.as_tensor(xy, dtype=torch.float32)
    if xy.shape[-2:] != (NUM_KEYPOINTS, 2):
        raise ValueError(f"keypoints must be [..., {NUM_KEYPOINTS}, 2], got {tuple(xy.shape)}")
    if visibility is None:
        visibility = torch.ones(xy.shape[:-1], dtype=torch.float32, device=xy.device)
    visibility = torch.as_tensor(visibility, dtype=torch.float32, device=xy.device)
    if visibility.shape != xy.shape[:-1]:
        raise ValueError(f"visibility must be {tuple(xy.shape[:-1])}, got {tuple(visibility.shape)}")
    finite = torch.isfinite(xy).all(dim=-1)
    visibility = visibility * finite
    xy = torch.nan_to_num(xy, nan=-10.0, posinf=-10.0, neginf=-10.0)

    # pixel centres in keypoint units, distances in heatmap pixels
    xs = (torch.arange(width, dtype=torch.float32, device=xy.device) + 0.5) / width      # [w]
    ys = (torch.arange(height, dtype=torch.float32, device=xy.device) + 0.5) / height    # [h]
    gx = torch.exp(-0.5 * ((xs - xy[..., 0:1]) * width / sigma) ** 2)                    # [..., K, w]
    gy = torch.exp(-0.5 * ((ys - xy[..., 1:2]) * height / sigma) ** 2)                   # [..., K, h]
    gy = gy * visibility[..., None]

    channels = []
    for group in HEATMAP_GROUPS:
        idx = torch.tensor(group.indices, device=xy.device)
        bumps = gy.index_select(-2, idx)[..., :, None] * gx.index_select(-2, idx)[..., None, :]  # [..., k, h, w]
        channels.append(bumps.amax(dim=-3))
    return torch.stack(channels, dim=-3)                                                  # [..., G, h, w]
