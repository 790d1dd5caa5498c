"""Framings and aspect ratios: where the (static) camera looks and how big the frame is."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.data.studio.rig import Rig
from model.errors import InputError

FRAMING_TEXT: dict[str, str] = {"face": "a face close-up", "portrait": "a head-and-shoulders portrait",
                                "half_body": "a half-body shot", "full_body": "a full-body shot"}


@dataclass(frozen=True)
class Camera:
    """Orthographic camera: world point -> pixel, for an output frame of width x height."""

    center_x: float
    center_y: float
    scale: float          # output pixels per world unit
    width: int
    height: int

    def to_pixels(self, points: np.ndarray, factor: float = 1.0) -> np.ndarray:
        """World [..., 2] -> pixel coordinates of a frame `factor` times the output size."""
        centre = np.array([self.center_x, self.center_y])
        half = np.array([self.width / 2, self.height / 2])
        return ((np.asarray(points, dtype=np.float64) - centre) * self.scale + half) * factor

    def to_normalized(self, points: np.ndarray) -> np.ndarray:
        """World [..., 2] -> [0, 1] image coordinates of the output frame."""
        pixels = self.to_pixels(points)
        return pixels / np.array([self.width, self.height], dtype=np.float64)


def frame_camera(rig: Rig, framing: str, width: int, height: int, rng: np.random.Generator) -> Camera:
    """A camera for one framing with a little random zoom and offset."""
    top = rig.head_top_y()
    bottoms = {
        "face": rig.chin_y() + 0.25,
        "portrait": rig.shoulder_y + 1.3,
        "half_body": rig.hip_y + 0.45,
        "full_body": rig.ankle_y() + 0.35,
    }
    if framing not in bottoms:
        raise InputError(f"unknown framing {framing!r}; expected one of {sorted(bottoms)}")
    margin = {"face": 0.12, "portrait": 0.2, "half_body": 0.25, "full_body": 0.3}[framing]
    span = (bottoms[framing] - (top - margin)) * rng.uniform(0.94, 1.08)
    scale = height / span
    center_y = (top - margin) + span / 2 + rng.uniform(-0.03, 0.03) * span
    world_width = width / scale
    slack = max(0.0, world_width / 2 - 1.6)
    center_x = rng.uniform(-0.5, 0.5) * min(slack, 0.25 * world_width) + rng.uniform(-0.03, 0.03) * world_width
    return Camera(center_x=float(center_x), center_y=float(center_y), scale=float(scale), width=width, height=height)
