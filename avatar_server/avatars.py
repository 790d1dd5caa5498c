"""Avatar images: safe validation, reference features computed once per avatar and cached."""

from __future__ import annotations

import asyncio
import io
import secrets
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from avatar_server.problems import Problem
from avatar_server.settings import LimitSettings

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_AVATAR_ID = "default"
MAX_NAME_CHARS = 64


@dataclass
class Avatar:
    """A validated image with its cached reference features and idle frame."""

    id: str
    name: str
    width: int
    height: int
    created: float
    builtin: bool
    reference: Any          # pipe.encode_reference(image): ReferenceFeatures
    idle: np.ndarray        # uint8 [H, W, 3]: the reference as cropped for the model (shown before the first chunk)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "width": self.width, "height": self.height,
                "created": self.created, "builtin": self.builtin}


#################################################################################
#                                  Validation                                   #
#################################################################################


def decode_image(data: bytes, limits: LimitSettings) -> Image.Image:
    """Bytes -> RGB image; Problem 413 (too big), 415 (not PNG/JPEG/WebP) or 422 (unusable).

    The header is checked before any pixel is decoded, and decompression-bomb warnings are errors.
    """
    if not data:
        raise Problem(422, "the upload is empty", code="empty_image")
    if len(data) > limits.max_upload_bytes:
        raise Problem(413, f"image is {len(data)} bytes; the limit is {limits.max_upload_bytes}", code="image_too_large")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as error:
            raise Problem(415, "not an image: upload a PNG, JPEG or WebP file", code="unsupported_image") from error
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise Problem(413, f"image has too many pixels: {error}", code="image_too_large") from error
        with image:
            if image.format not in ALLOWED_FORMATS:
                raise Problem(415, f"image format {image.format} is not supported: use PNG, JPEG or WebP",
                              code="unsupported_image")
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise Problem(413, f"image has {width}x{height} pixels; the limit is {limits.max_image_pixels}",
                              code="image_too_large")
            if min(width, height) < limits.min_image_side:
                raise Problem(422, f"image is {width}x{height}; each side must be at least {limits.min_image_side} px",
                              code="image_too_small")
            try:
                image.load()
                rgb = ImageOps.exif_transpose(image).convert("RGB")
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as error:
                raise Problem(422, f"image cannot be decoded: {error}", code="corrupt_image") from error
    return rgb


#################################################################################
#                                     Store                                     #
#################################################################################


class AvatarStore:
    """In-memory avatars; the built-in default cannot be deleted."""

    def __init__(self, pipe: Any, limits: LimitSettings) -> None:
        self.pipe = pipe
        self.limits = limits
        self._avatars: dict[str, Avatar] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._avatars)

    async def add(self, data: bytes, name: str | None = None, *, avatar_id: str | None = None,
                  builtin: bool = False) -> Avatar:
        """Validate, encode the reference once (off the event loop) and store."""
        if name is not None and len(name) > MAX_NAME_CHARS:
            raise Problem(422, f"avatar name is longer than {MAX_NAME_CHARS} characters", code="invalid_name")
        if not builtin and sum(not a.builtin for a in self._avatars.values()) >= self.limits.max_avatars:
            raise Problem(409, f"the server holds its maximum of {self.limits.max_avatars} avatars; delete one first",
                          code="avatar_limit")
        image = await asyncio.to_thread(decode_image, data, self.limits)
        reference = await asyncio.to_thread(self.pipe.encode_reference, image)
        avatar = Avatar(
            id=avatar_id or "av_" + secrets.token_hex(8), name=name or avatar_id or "avatar",
            width=image.width, height=image.height, created=time.time(), builtin=builtin,
            reference=reference, idle=np.asarray(reference.image, np.uint8),
        )
        with self._lock:
            self._avatars[avatar.id] = avatar
        return avatar

    def get(self, avatar_id: str) -> Avatar:
        avatar = self._avatars.get(avatar_id)
        if avatar is None:
            raise Problem(404, f"unknown avatar {avatar_id!r}", code="unknown_avatar")
        return avatar

    def list(self) -> list[Avatar]:
        return sorted(self._avatars.values(), key=lambda a: (not a.builtin, a.created))

    def delete(self, avatar_id: str) -> None:
        avatar = self.get(avatar_id)
        if avatar.builtin:
            raise Problem(409, f"avatar {avatar_id!r} is built in and cannot be deleted", code="builtin_avatar")
        with self._lock:
            self._avatars.pop(avatar_id, None)
