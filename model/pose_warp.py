"""Pose-driven head motion: decoded frames warped so the avatar's head follows a pose's keypoints.

The pose condition (keypoints, model/data/keypoints.py) moves the head: the stream's first pose is its
anchor, and each frame is the decoded frame warped by a thin-plate spline that carries the anchor's
head and shoulder keypoints to that frame's, with the image border held still (background stays put).
The motion is relative: a pose drawn at another place or scale than the avatar is first aligned to the
avatar by its lips (the pose's lip centre and corner-to-corner width onto the avatar's mouth box), so a
client can drive any avatar with keypoints of its own face.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model.conditioning.mouth import MouthBox
from model.data import keypoints as kp

LIP_CORNERS = (kp.face_part("outer_lip").start, kp.face_part("outer_lip").start + 6)  # right, left corner
# head and shoulders: the jaw's upper ends, brows, eyes and nose, the lip corners (a wider or rounder mouth, a
# smile), the neck and shoulders. Not the rest of the lips nor the chin: the mouth guide opens the mouth and
# drops the jaw, so a chin that followed the pose would drop twice. Against ground truth on the evaluation
# clips (renders with its pose): with the chin 21.1 dB, without it 21.7, with the lip corners 22.2.
_JAW = kp.face_part("jaw")
CONTROL_POINTS = np.r_[[_JAW.start, _JAW.start + 1, _JAW.stop - 2, _JAW.stop - 1],
                       np.arange(kp.face_part("right_brow").start, kp.face_part("nose").stop), LIP_CORNERS,
                       [kp.index("body.neck"), kp.index("body.right_shoulder"), kp.index("body.left_shoulder")]]
# the image border, held still: corners, edge midpoints and the bottom quarters (the body's side)
BORDER = np.array([[0, 0], [0.5, 0], [1, 0], [0, 0.5], [1, 0.5], [0, 1], [0.5, 1], [1, 1],
                   [0, 0.75], [1, 0.75], [0.25, 1], [0.75, 1]], dtype=np.float64)
COARSE_GRID = 32          # the spline is evaluated on this grid and upsampled (it is smooth)
REGULARISATION = 1e-3     # thin-plate smoothing: a keypoint that jitters does not tear the image
MIN_CONTROL_POINTS = 3    # fewer visible keypoints than this: the frame is not warped


#################################################################################
#                               Thin-plate spline                               #
#################################################################################

def thin_plate_kernel(squared: np.ndarray) -> np.ndarray:
    """The thin-plate kernel U(r) = r^2 log r^2 (0 at r = 0)."""
    return np.where(squared > 0, squared * np.log(np.maximum(squared, 1e-12)), 0.0)


def spline_system(controls: np.ndarray) -> np.ndarray:
    """The thin-plate spline's linear system [N + 3, N + 3] on control points [N, 2] (smoothed by REGULARISATION)."""
    n = len(controls)
    kernel = thin_plate_kernel(((controls[:, None] - controls[None]) ** 2).sum(-1)) + REGULARISATION * np.eye(n)
    affine = np.c_[np.ones(n), controls]  # [N, 3]
    system = np.zeros((n + 3, n + 3))
    system[:n, :n], system[:n, n:], system[n:, :n] = kernel, affine, affine.T
    return system


def coarse_points() -> np.ndarray:
    """The centres [G*G, 2] of the COARSE_GRID x COARSE_GRID cells the spline is evaluated at, row by row."""
    steps = (np.arange(COARSE_GRID) + 0.5) / COARSE_GRID
    ys, xs = np.meshgrid(steps, steps, indexing="ij")
    return np.stack([xs, ys], -1).reshape(-1, 2)


def spline_basis(queries: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """[Q, N + 3]: the spline's value at points `queries` [Q, 2] is this times its coefficients [N + 3, 2]."""
    return np.c_[thin_plate_kernel(((queries[:, None] - controls[None]) ** 2).sum(-1)), np.ones(len(queries)), queries]


def fine_grids(coarse: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sampling positions [F, G, G, 2] in [0, 1] image coordinates -> grid_sample grids [F, H, W, 2] in [-1, 1]."""
    fine = F.interpolate((coarse * 2 - 1).permute(0, 3, 1, 2), size=(height, width), mode="bilinear",
                         align_corners=False)
    return fine.permute(0, 2, 3, 1).contiguous()


def tps_grid(target: np.ndarray, source: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Backward sampling grid [H, W, 2] (grid_sample's [-1, 1] coords) under which the point at `source[i]`
    lands on `target[i]`; both [N, 2] in [0, 1] image coordinates."""
    values = np.zeros((len(target) + 3, 2))
    values[:len(target)] = source
    coefficients = np.linalg.solve(spline_system(target), values)  # [N + 3, 2]
    mapped = spline_basis(coarse_points(), target) @ coefficients  # [G*G, 2]
    coarse = torch.from_numpy(mapped.reshape(1, COARSE_GRID, COARSE_GRID, 2)).float()
    return fine_grids(coarse, height, width)[0]  # [H, W, 2]


def warp_frames(frames: np.ndarray, grids: torch.Tensor, person: np.ndarray | None = None) -> np.ndarray:
    """uint8 frames [F, H, W, 3] resampled through grids [F or 1, H, W, 2]; uint8 [F, H, W, 3]. With the person's
    matte [H, W] (1 = person), the backdrop is held still: wherever neither the frame nor its warp shows the
    person, the frame's own pixel stays (where the person moved off, the warp's stretched backdrop fills in)."""
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # [F, 3, H, W]
    grids = grids.expand(len(frames), *grids.shape[1:])
    out = F.grid_sample(pixels, grids, mode="bilinear", padding_mode="border", align_corners=False)
    if person is not None:
        matte = torch.from_numpy(person)[None, None].expand(len(frames), 1, *person.shape)  # [F, 1, H, W]
        moved = F.grid_sample(matte, grids, mode="bilinear", padding_mode="border", align_corners=False)
        backdrop = (1 - moved) * (1 - matte)  # [F, 1, H, W] backdrop before and after the warp
        out = out + backdrop * (pixels - out)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


#################################################################################
#                                   PoseWarp                                    #
#################################################################################

def _lips(xy: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Lip-line centre [2] and corner-to-corner width of a pose [K, 2]; None when the corners are missing."""
    right, left = xy[LIP_CORNERS[0]], xy[LIP_CORNERS[1]]
    if not (np.isfinite(right).all() and np.isfinite(left).all()):
        return None
    width = float(np.linalg.norm(left - right))
    return ((right + left) / 2, width) if width > 1e-4 else None


class PoseWarp:
    """Per-frame warps of one stream: from its anchor pose to each later pose, aligned to the avatar."""

    def __init__(self, anchor: np.ndarray, height: int, width: int, mouth: MouthBox | None = None) -> None:
        """anchor: the stream's first pose [K, 3] (x, y in [0, 1], visibility); mouth: the avatar's mouth
        box, onto which the pose's lips are aligned (None: the pose is in the avatar's own coordinates)."""
        self.height, self.width = height, width
        self.scale, self.offset = 1.0, np.zeros(2)
        lips = _lips(anchor[:, :2]) if mouth is not None else None
        if mouth is not None and lips is not None:
            centre, lip_width = lips
            self.scale = mouth.width / lip_width
            self.offset = np.array([mouth.x, mouth.y]) - self.scale * centre
        self.anchor = self._controls(anchor)

    def _controls(self, pose: np.ndarray) -> np.ndarray:
        """The pose's control points [N, 2] in the avatar's coordinates (NaN where not visible)."""
        points = pose[CONTROL_POINTS, :2].astype(np.float64) * self.scale + self.offset
        hidden = (pose[CONTROL_POINTS, 2] <= 0) if pose.shape[1] > 2 else np.zeros(len(points), bool)
        points[hidden | ~np.isfinite(points).all(axis=1)] = np.nan
        return points

    def grid(self, pose: np.ndarray) -> torch.Tensor | None:
        """The sampling grid [H, W, 2] that moves the anchor's head to `pose` [K, 3]; None when too few
        keypoints are visible in both (the frame is shown unwarped)."""
        target = self._controls(pose)
        both = np.isfinite(target).all(axis=1) & np.isfinite(self.anchor).all(axis=1)
        if both.sum() < MIN_CONTROL_POINTS:
            return None
        return tps_grid(np.r_[target[both], BORDER], np.r_[self.anchor[both], BORDER], self.height, self.width)

    def grids(self, poses: np.ndarray) -> torch.Tensor | None:
        """Grids [F, H, W, 2] for poses [F, K, 3]; an identity grid stands in for a frame it cannot warp,
        None when no frame can be warped."""
        grids = [self.grid(pose) for pose in poses]
        if all(g is None for g in grids):
            return None
        identity = tps_grid(BORDER, BORDER, self.height, self.width)
        return torch.stack([identity if g is None else g for g in grids])
