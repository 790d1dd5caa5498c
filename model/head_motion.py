"""Head motion for streams without a pose: a slow sway that grows while the avatar speaks, and nods.

A head that never moves reads as a photo. The studio's people sway all the time (on 40 faces-v2 val clips the
nose moves with a std of 0.31 mouth widths sideways and 0.08 up and down, the eye line rolls 0.055 rad); the
avatar sways about half as much, as a warp of whole frames can only move the head, not turn it. Each stream
draws its own sway from its seed (a sum of slow sines: causal, nothing to buffer), scaled up while the avatar
speaks (the motion model's openness, smoothed) and with a nod when the openness jumps (a stressed syllable).

The head is moved like the pose warp moves it (model/pose_warp.py), with a thin-plate spline: a rig of control
points placed from the avatar's mouth box (a ring around the face, the eyes, nose and mouth) turns and shifts
rigidly about the neck, the shoulders and the image border stay. The motion is small, so the spline is fitted
once per avatar on the rig at rest and each frame's sampling grid is the rest grid minus that frame's
displacement field (exact to first order in the displacement).
"""

from __future__ import annotations

import numpy as np
import torch

from model.conditioning.mouth import MouthBox
from model.pose_warp import BORDER, COARSE_GRID, coarse_points, fine_grids, spline_basis, spline_system

# The rig, in mouth widths from the closed mouth's centre (x right, y down; the eyes as model/blinks.py)
FACE_CENTRE_Y = -0.9                 # the face's middle, above the mouth
FACE_RADII = (1.6, 2.0)              # a ring around the face and hair
RING_POINTS = 12
FEATURES = ((-0.6, -1.18), (0.6, -1.18), (0.0, -0.55), (0.0, 0.0))  # eyes, nose, mouth
NECK = (0.0, 1.3)                    # the pivot the head turns about
SHOULDERS = ((-2.6, 2.4), (2.6, 2.4))  # held still
# The sway: each axis is a sum of SINES slow sines (frequencies uniform in SWAY_HZ), normalised to unit std.
SINES = 3
SWAY_HZ = (0.08, 0.35)
SWAY_STD = (0.15, 0.05, 0.03)        # sideways, up-down (mouth widths) and roll (rad) while speaking
IDLE_GAIN = 0.5                      # the share of that sway in silence
ACTIVITY_RISE, ACTIVITY_FALL = 0.15, 0.03  # per frame: how fast the speaking gain follows the openness
NOD_JUMP = 0.3                       # an openness rise this large over NOD_SPAN frames starts a nod
NOD_SPAN = 3
NOD_DEPTH = 0.12                     # mouth widths down at the nod's deepest
NOD_PROFILE = np.sin(np.linspace(0, np.pi, 12)) * np.exp(-np.linspace(0, 2, 12))
NOD_GAP = 15                         # frames between two nods at least


#################################################################################
#                                    The rig                                    #
#################################################################################

class HeadRig:
    """An avatar's head control points and the spline fitted on them at rest, for one frame size."""

    def __init__(self, mouth: MouthBox, height: int, width: int) -> None:
        unit = np.array([mouth.width, mouth.width * width / height])  # one mouth width in x and y image fractions
        origin = np.array([mouth.x, mouth.y])
        angles = np.linspace(0, 2 * np.pi, RING_POINTS, endpoint=False)
        ring = np.stack([FACE_RADII[0] * np.cos(angles), FACE_CENTRE_Y + FACE_RADII[1] * np.sin(angles)], 1)
        head = np.concatenate([ring, np.array(FEATURES)])  # [N, 2] in mouth widths
        self.head = origin + head * unit  # [N, 2] image fractions
        self.neck = origin + np.array(NECK) * unit
        self.unit = unit
        still = np.concatenate([origin + np.array(SHOULDERS) * unit, BORDER])  # [M, 2]
        controls = np.concatenate([self.head, still])
        queries = coarse_points()  # [G*G, 2]
        # [G*G, N]: the head points' displacements -> the displacement at each grid point (the still points and
        # the affine rows contribute zero, so only the head's columns of the inverse are kept)
        inverse = np.linalg.inv(spline_system(controls))[:, :len(self.head)]
        self._field = torch.from_numpy(spline_basis(queries, controls) @ inverse).float()
        self._rest = torch.from_numpy(queries.reshape(COARSE_GRID, COARSE_GRID, 2)).float()
        self.size = (height, width)

    def grids(self, poses: np.ndarray) -> torch.Tensor:
        """Head poses [F, 3] (sideways, down in mouth widths; roll in rad) -> sampling grids [F, H, W, 2]."""
        targets = np.stack([self.moved(pose) for pose in poses])  # [F, N, 2]
        moves = torch.from_numpy(targets - self.head).float()  # [F, N, 2]
        fields = self._field @ moves  # [F, G*G, 2]: the displacement at each grid point
        coarse = self._rest[None] - fields.reshape(len(poses), COARSE_GRID, COARSE_GRID, 2)
        return fine_grids(coarse, *self.size)  # [F, H, W, 2]

    def moved(self, pose: np.ndarray) -> np.ndarray:
        """The head's control points [N, 2] turned by pose[2] about the neck and shifted by pose[:2] mouth widths."""
        cos, sin = np.cos(pose[2]), np.sin(pose[2])
        relative = (self.head - self.neck) / self.unit  # in mouth widths, so the turn is round on any aspect
        turned = relative @ np.array([[cos, sin], [-sin, cos]])
        return self.neck + (turned + pose[:2]) * self.unit


#################################################################################
#                                   The sway                                    #
#################################################################################

class HeadSway:
    """One stream's head poses, frame by frame: deterministic per seed, driven by the mouth openness."""

    def __init__(self, seed: int, fps: int) -> None:
        rng = np.random.default_rng([seed, 7])
        self._hz = rng.uniform(*SWAY_HZ, size=(3, SINES))  # [axis, sine]
        self._phase = rng.uniform(0, 2 * np.pi, size=(3, SINES))
        self._fps = fps
        self._activity = 0.0
        self._recent: list[float] = []  # the last NOD_SPAN openness values
        self._nod_start = -NOD_GAP

    def poses(self, first_frame: int, openness: np.ndarray) -> np.ndarray:
        """Poses [F, 3] of frames first_frame.. (openness [F] of the same frames); call with consecutive frames."""
        out = np.zeros((len(openness), 3))
        for k, value in enumerate(np.asarray(openness, dtype=np.float64)):
            frame = first_frame + k
            rate = ACTIVITY_RISE if value > self._activity else ACTIVITY_FALL
            self._activity += rate * (min(value * 2, 1.0) - self._activity)
            if self._recent and value - min(self._recent) > NOD_JUMP and frame - self._nod_start >= NOD_GAP:
                self._nod_start = frame
            self._recent = (self._recent + [value])[-NOD_SPAN:]
            t = frame / self._fps
            waves = np.sin(2 * np.pi * self._hz * t + self._phase).sum(axis=1) * np.sqrt(2 / SINES)  # [3], unit std
            out[k] = waves * np.array(SWAY_STD) * (IDLE_GAIN + (1 - IDLE_GAIN) * self._activity)
            since = frame - self._nod_start
            if 0 <= since < len(NOD_PROFILE):
                out[k, 1] += NOD_DEPTH * NOD_PROFILE[since]
        return out
