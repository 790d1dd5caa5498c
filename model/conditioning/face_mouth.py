"""The mouth of a photo's face: OpenCV's frontal-face detector and where the closed lips sit in its face box.

The mouth locator (mouth_locator.py) knows the studio's drawn faces; on a photo it often finds no mouth. The
pipeline then asks this detector (its Haar cascade ships inside the opencv wheel: nothing is downloaded) for the
largest frontal face and places the mouth at the lip line of a frontal face box.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from model.conditioning.mouth import MouthBox

logger = logging.getLogger(__name__)

FACE_CASCADE = "haarcascade_frontalface_default.xml"
# The closed lips in the detector's face box: centre x, lip-line y and corner-to-corner width, as fractions of the
# box (the box runs from the brows to just below the lower lip; on the NASA portrait the lip line is at 0.80).
MOUTH_IN_FACE = (0.5, 0.80, 0.40)
MIN_FACE = 0.15        # the face box's side, as a fraction of the image's shorter side
DETECT_SIDE = 512      # pictures larger than this are scaled down first (the detector's speed)

_detector: cv2.CascadeClassifier | None = None


def _face_detector() -> cv2.CascadeClassifier:
    """The frontal-face cascade, loaded once."""
    global _detector
    if _detector is None:
        _detector = cv2.CascadeClassifier(cv2.data.haarcascades + FACE_CASCADE)
        if _detector.empty():
            raise RuntimeError(f"OpenCV's {FACE_CASCADE} could not be loaded from {cv2.data.haarcascades}")
    return _detector


def mouth_from_face(image: np.ndarray) -> MouthBox | None:
    """uint8 [H, W, 3] RGB -> the closed mouth of its largest frontal face, in [0, 1] coordinates of the image;
    None when no frontal face is found."""
    height, width = image.shape[:2]
    scale = min(1.0, DETECT_SIDE / max(height, width))
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    side = max(24, round(MIN_FACE * min(gray.shape)))
    faces = _face_detector().detectMultiScale(cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=5,
                                              minSize=(side, side))
    if len(faces) == 0:
        return None
    x, y, w, h = (float(v) / scale for v in max(faces, key=lambda f: f[2] * f[3]))
    fx, fy, fw = MOUTH_IN_FACE
    logger.debug("face found at %s px; mouth placed in it", [x, y, w, h])
    return MouthBox(x=(x + fx * w) / width, y=(y + fy * h) / height, width=min(fw * w / width, 0.9))
