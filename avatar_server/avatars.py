"""Avatar images: safe validation, reference features computed once per avatar and cached."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import io
import logging
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
from avatar_server.text import check_text
from model.conditioning.mouth import MouthBox
from model.errors import InputError

logger = logging.getLogger(__name__)

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_AVATAR_ID = "default"
MAX_NAME_CHARS = 64


def _load_libc() -> ctypes.CDLL | None:
    """glibc, for malloc_trim; None elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


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
    idle: np.ndarray        # uint8 [H, W, 3]: shown before the first chunk and faded to on barge-in: the model's
                            # shut-mouth frame when it has one (no jump to the generated look), else the cropped reference


def parse_mouth(text: str) -> MouthBox:
    """"x,y,width": the closed mouth's lip-line centre and corner-to-corner width, in [0, 1] fractions of the
    uploaded image; Problem 422 when it is not three numbers (MouthBox checks their ranges)."""
    try:
        x, y, width = (float(part) for part in text.split(","))
    except ValueError:
        raise Problem(422, f"mouth must be three comma-separated numbers x,y,width (fractions of the image), "
                      f"got {text[:40]!r}", code="invalid_mouth") from None
    return MouthBox(x=x, y=y, width=width)


def idle_frame(reference: Any) -> np.ndarray:
    """The avatar's idle image: the model's own shut-mouth frame (`still`), else the cropped reference."""
    still = getattr(reference, "still", None)
    return reference.image if still is None else still


#################################################################################
#                                  Validation                                   #
#################################################################################


def _open(data: bytes, limits: LimitSettings) -> Image.Image:
    """Read the header only; Problem 415 when it is not an image, 413 for a decompression bomb, 422 when broken."""
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise Problem(415, "not an image: upload a PNG, JPEG or WebP file", code="unsupported_image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Problem(413, f"image has more than {limits.max_image_pixels} pixels", code="image_too_large") from None
    except Exception as error:  # noqa: BLE001 - PIL plugins raise anything on hostile headers
        logger.debug("image header unreadable: %r", error)
        raise Problem(422, "the image is truncated or corrupt", code="corrupt_image") from None


def _check_header(image: Image.Image, limits: LimitSettings) -> None:
    """Format, pixel count and side length, from the header (nothing decoded yet)."""
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


def _pixels(image: Image.Image, limits: LimitSettings) -> Image.Image:
    """Decode at the smallest size that keeps `reference_side` (JPEG draft), upright, RGB, reduced."""
    side = limits.reference_side
    if image.format == "JPEG":
        width, height = image.size
        scale = max(1.0, min(width, height) / side)
        image.draft("RGB", (int(width / scale), int(height / scale)))
    image.load()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    ImageOps.exif_transpose(rgb, in_place=True)
    factor = min(rgb.size) // side
    return rgb.reduce(factor) if factor > 1 else rgb


def decode_image(data: bytes, limits: LimitSettings) -> tuple[Image.Image, tuple[int, int]]:
    """Bytes -> (RGB image reduced to about `reference_side`, original size); Problem 413 (too big),
    415 (not PNG/JPEG/WebP) or 422 (empty, truncated, corrupt, too small).

    The header is checked before any pixel is decoded, and decompression-bomb warnings are errors.
    """
    if not data:
        raise Problem(422, "the upload is empty", code="empty_image")
    if len(data) > limits.max_upload_bytes:
        raise Problem(413, f"image is {len(data)} bytes; the limit is {limits.max_upload_bytes}", code="image_too_large")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(data, limits)  # reads from memory: nothing to close
        _check_header(image, limits)
        size = image.size  # before draft() shrinks it
        try:
            return _pixels(image, limits), size
        except Exception as error:  # noqa: BLE001 - truncated data, bad chunks, text/ICC bombs, bad EXIF
            logger.debug("image decode failed: %r", error)
            raise Problem(422, "the image is truncated or corrupt", code="corrupt_image") from None


def release_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps large freed image buffers resident otherwise)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


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
        self._reserved = 0  # uploads admitted and still being processed (count against max_avatars)
        self._decodes = asyncio.Semaphore(limits.max_concurrent_decodes)

    def __len__(self) -> int:
        return len(self._avatars)

    async def add(self, data: bytes, name: str | None = None, *, avatar_id: str | None = None,
                  builtin: bool = False, mouth: MouthBox | None = None) -> Avatar:
        """Validate, encode the reference once (off the event loop, a bounded number at a time) and store;
        `mouth` places the closed mouth on the image instead of the model's locator."""
        if name is not None and len(name) > MAX_NAME_CHARS:
            raise Problem(422, f"avatar name is longer than {MAX_NAME_CHARS} characters", code="invalid_name")
        if name is not None:
            check_text(name, "avatar name")
        if not builtin:
            self._reserve()
        try:
            async with self._decodes:
                avatar = await asyncio.to_thread(self._build, data, name, avatar_id, builtin, mouth)
            with self._lock:
                self._avatars[avatar.id] = avatar
            return avatar
        finally:
            if not builtin:
                self._reserved -= 1

    def _reserve(self) -> None:
        """Take a place in the store before any work (atomic on the event loop); Problem 409 when full."""
        stored = sum(not a.builtin for a in self._avatars.values())
        if stored + self._reserved >= self.limits.max_avatars:
            raise Problem(409, f"the server holds its maximum of {self.limits.max_avatars} avatars; delete one first",
                          code="avatar_limit")
        self._reserved += 1

    def _build(self, data: bytes, name: str | None, avatar_id: str | None, builtin: bool,
               mouth: MouthBox | None) -> Avatar:
        """Decode and encode the reference (worker thread)."""
        try:
            image, (width, height) = decode_image(data, self.limits)
            try:
                reference = self.pipe.encode_reference(image, mouth=mouth)
            except InputError as error:  # no mouth found, or the given one cut off by the crop
                raise Problem(422, str(error), code="unusable_avatar") from None
            del image
            return Avatar(
                id=avatar_id or "av_" + secrets.token_hex(8), name=name or avatar_id or "avatar",
                width=width, height=height, created=time.time(), builtin=builtin,
                reference=reference, idle=np.asarray(idle_frame(reference), np.uint8),
            )
        finally:
            release_memory()

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
