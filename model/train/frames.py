"""Clip frames at model resolution: aspect buckets, resizing and region weight maps (mouth, hands, face)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from model.data import keypoints as kp

#################################################################################
#                                 Aspect buckets                                #
#################################################################################


def bucket_size(width: int, height: int, area: int, unit: int) -> tuple[int, int]:
    """(height, width) with about `area` pixels, the clip's aspect ratio, both multiples of `unit`."""
    aspect = width / height
    out_h = max(unit, round(math.sqrt(area / aspect) / unit) * unit)
    out_w = max(unit, round(math.sqrt(area * aspect) / unit) * unit)
    return int(out_h), int(out_w)


def resize_frames(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [T, 3, height, width] (antialiased; keypoint coords in [0, 1] stay valid)."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    if video.shape[-2:] != (height, width):
        pieces = [F.interpolate(part, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
                  for part in video.split(64)]
        video = torch.cat(pieces)
    return video.round().clamp(0, 255).to(torch.uint8)


#################################################################################
#                                 Region weights                                #
#################################################################################

REGIONS: dict[str, tuple[slice, ...]] = {
    "mouth": (kp.LIPS,),
    "hands": (kp.LEFT_HAND, kp.RIGHT_HAND),
    "face": (kp.FACE,),
    "eyes": (kp.face_part("right_eye"), kp.face_part("left_eye")),
}


def _box(points: np.ndarray, visible: np.ndarray, margin: float) -> tuple[float, float, float, float] | None:
    """Box (x0, y0, x1, y1) in [0, 1] around the visible points, grown by `margin` x its size."""
    points = points[visible > 0.5]
    if len(points) == 0:
        return None
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = np.maximum(hi - lo, 0.02) * margin
    return (lo[0] - pad[0], lo[1] - pad[1], hi[0] + pad[0], hi[1] + pad[1])


def region_weights(
    xy: np.ndarray, visibility: np.ndarray, height: int, width: int, weights: dict[str, float], margin: float
) -> torch.Tensor:
    """Per-pixel loss weights [T, 1, H, W]: 1 everywhere, `weights[region]` inside that region's boxes."""
    frames = xy.shape[0]
    out = torch.ones(frames, 1, height, width)
    ys = (torch.arange(height) + 0.5) / height
    xs = (torch.arange(width) + 0.5) / width
    for region, slices in REGIONS.items():
        weight = weights.get(region, 1.0)
        if weight == 1.0:
            continue
        for t in range(frames):
            for part in slices:
                box = _box(xy[t, part], visibility[t, part], margin)
                if box is None:
                    continue
                inside = (ys[:, None] >= box[1]) & (ys[:, None] <= box[3]) & (xs[None] >= box[0]) & (xs[None] <= box[2])
                out[t, 0] = torch.where(inside, torch.maximum(out[t, 0], torch.tensor(weight)), out[t, 0])
    return out
