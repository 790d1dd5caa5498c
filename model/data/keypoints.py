"""The keypoint layout shared by the studio, real-video prep, heatmaps and the pose guider.

K = 106 keypoints in a fixed order: 18 body points (OpenPose-18 order), 21 points per hand
(wrist, then thumb, index, middle, ring, pinky from base to tip) and 46 face points (jaw,
brows, eyes, nose, outer and inner lip contours). "left"/"right" are the person's own sides.
Coordinates are (x, y) in [0, 1] image coordinates (x right, y down); visibility is 1 where the
point is drawn inside the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ------------------------------------------------------------------------------------------------
# Names
# ------------------------------------------------------------------------------------------------

BODY_NAMES: tuple[str, ...] = (
    "nose", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)

FINGERS: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")
HAND_NAMES: tuple[str, ...] = ("wrist",) + tuple(f"{f}_{j}" for f in FINGERS for j in range(1, 5))

FACE_PARTS: tuple[tuple[str, int], ...] = (
    ("jaw", 9),             # right ear level -> chin -> left ear level
    ("right_brow", 3),
    ("left_brow", 3),
    ("right_eye", 4),       # outer corner, top, inner corner, bottom
    ("left_eye", 4),        # inner corner, top, outer corner, bottom
    ("nose", 3),            # bridge, tip, base
    ("outer_lip", 12),      # right corner, clockwise on screen: upper lip to left corner, lower lip back
    ("inner_lip", 8),       # right corner, upper inner contour, left corner, lower inner contour
)
FACE_NAMES: tuple[str, ...] = tuple(f"{part}_{i}" for part, n in FACE_PARTS for i in range(n))

KEYPOINT_NAMES: tuple[str, ...] = (
    tuple(f"body.{n}" for n in BODY_NAMES)
    + tuple(f"left_hand.{n}" for n in HAND_NAMES)
    + tuple(f"right_hand.{n}" for n in HAND_NAMES)
    + tuple(f"face.{n}" for n in FACE_NAMES)
)
NUM_KEYPOINTS: int = len(KEYPOINT_NAMES)

# ------------------------------------------------------------------------------------------------
# Index ranges
# ------------------------------------------------------------------------------------------------

BODY = slice(0, len(BODY_NAMES))
LEFT_HAND = slice(BODY.stop, BODY.stop + len(HAND_NAMES))
RIGHT_HAND = slice(LEFT_HAND.stop, LEFT_HAND.stop + len(HAND_NAMES))
FACE = slice(RIGHT_HAND.stop, RIGHT_HAND.stop + len(FACE_NAMES))


def index(name: str) -> int:
    """Index of a keypoint by its full name, e.g. "body.nose" or "face.outer_lip_0"."""
    return KEYPOINT_NAMES.index(name)


def face_part(part: str) -> slice:
    """Absolute index range of one face part, e.g. face_part("inner_lip")."""
    start = FACE.start
    for name, n in FACE_PARTS:
        if name == part:
            return slice(start, start + n)
        start += n
    raise KeyError(part)


LIPS = slice(face_part("outer_lip").start, face_part("inner_lip").stop)
FACE_WITHOUT_LIPS = slice(FACE.start, LIPS.start)

# ------------------------------------------------------------------------------------------------
# Heatmap groups (one heatmap channel each)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeypointGroup:
    """A named set of keypoints rendered into one heatmap channel."""

    name: str
    indices: tuple[int, ...]


HEATMAP_GROUPS: tuple[KeypointGroup, ...] = (
    KeypointGroup("body", tuple(range(BODY.start, BODY.stop))),
    KeypointGroup("left_hand", tuple(range(LEFT_HAND.start, LEFT_HAND.stop))),
    KeypointGroup("right_hand", tuple(range(RIGHT_HAND.start, RIGHT_HAND.stop))),
    KeypointGroup("face", tuple(range(FACE_WITHOUT_LIPS.start, FACE_WITHOUT_LIPS.stop))),
    KeypointGroup("lips", tuple(range(LIPS.start, LIPS.stop))),
)
NUM_GROUPS: int = len(HEATMAP_GROUPS)


def group_matrix() -> np.ndarray:
    """One-hot membership [G, K] (float32): row g marks the keypoints of group g."""
    matrix = np.zeros((NUM_GROUPS, NUM_KEYPOINTS), dtype=np.float32)
    for g, group in enumerate(HEATMAP_GROUPS):
        matrix[g, list(group.indices)] = 1.0
    return matrix
