"""Where a mouth is on an image (MouthBox) and how open it is, from the shared keypoint layout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.data import keypoints as kp
from model.errors import InputError

OUTER_LIP = kp.face_part("outer_lip")
INNER_LIP = kp.face_part("inner_lip")
RIGHT_CORNER, LEFT_CORNER = OUTER_LIP.start, OUTER_LIP.start + 6  # outer-lip corners (see keypoints.FACE_PARTS)


@dataclass(frozen=True)
class MouthBox:
    """A closed mouth's place on an image, in [0, 1] image coordinates (x right, y down)."""

    x: float  # centre of the lip line
    y: float
    width: float  # corner to corner, as a fraction of the image width

    def __post_init__(self) -> None:
        values = (self.x, self.y, self.width)
        if not all(np.isfinite(v) for v in values):
            raise InputError(f"mouth box must be finite numbers, got {values}")
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise InputError(f"mouth centre must lie inside the image ([0, 1] coordinates), got ({self.x}, {self.y})")
        if not 0.02 <= self.width <= 0.9:
            raise InputError(f"mouth width must be between 0.02 and 0.9 of the image width, got {self.width}")

    def as_list(self) -> list[float]:
        """[x, y, width] (JSON-able)."""
        return [float(self.x), float(self.y), float(self.width)]


def mouth_box_from_keypoints(xy: np.ndarray, visibility: np.ndarray | None = None) -> MouthBox | None:
    """One pose's keypoints xy [K, 2] (+ visibility [K]) -> its MouthBox, or None when the lips are not visible."""
    xy = np.asarray(xy, dtype=np.float32)
    if xy.shape != (kp.NUM_KEYPOINTS, 2):
        raise InputError(f"keypoints must be [{kp.NUM_KEYPOINTS}, 2], got {list(xy.shape)}")
    lips = xy[kp.LIPS]
    if visibility is not None and float(np.asarray(visibility)[kp.LIPS].min()) < 0.5:
        return None
    if not np.isfinite(lips).all():
        return None
    centre = xy[INNER_LIP].mean(axis=0)
    width = float(np.linalg.norm(xy[LEFT_CORNER] - xy[RIGHT_CORNER]))
    try:
        return MouthBox(x=float(centre[0]), y=float(centre[1]), width=width)
    except InputError:
        return None
