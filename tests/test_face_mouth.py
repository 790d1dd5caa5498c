"""Photos get a mouth too: where the studio-trained locator finds none, a frontal face places it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.conditioning.face_mouth import mouth_from_face
from model.errors import InputError
from model.media import load_image
from model.pipeline import DEFAULT_CHECKPOINT, AvatarPipeline

PHOTO = Path(__file__).resolve().parent / "assets" / "astronaut.jpg"
LIPS = (0.45, 0.29)  # the NASA portrait's lip line, read by hand on the picture


def test_a_photo_s_mouth_is_on_its_lips() -> None:
    box = mouth_from_face(np.asarray(load_image(PHOTO)))
    assert box is not None
    assert abs(box.x - LIPS[0]) < 0.03 and abs(box.y - LIPS[1]) < 0.03 and 0.05 < box.width < 0.12


@pytest.mark.parametrize("kind", ["noise", "flat"])
def test_no_face_no_mouth(kind: str) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (160, 200, 3), dtype=np.uint8) if kind == "noise" else np.full((160, 200, 3), 90, np.uint8)
    assert mouth_from_face(image) is None


def test_an_uploaded_photo_gets_its_mouth_bank() -> None:
    """The locator finds no mouth on the photo; the avatar is built anyway, its mouth where the face puts it."""
    torch.set_num_threads(1)
    pipe = AvatarPipeline.from_pretrained(DEFAULT_CHECKPOINT)
    photo = load_image(PHOTO)
    with pytest.raises(InputError, match="no face mouth"):
        pipe.locate_mouth(np.asarray(photo.resize((128, 128))))
    reference = pipe.encode_reference(photo)
    box = reference.mouth_bank.box
    assert abs(box.x - LIPS[0]) < 0.03 and abs(box.y - LIPS[1]) < 0.03
