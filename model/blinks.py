"""Blinks: the avatar's eyes closed once in the latent space (like the mouth bank), added to the guide
on a schedule of blinks every few seconds.

The eyes are placed from the located mouth (where the studio's faces keep them, measured on 122
closed-mouth faces of data/faces-v2) and refined on the picture: each eye is the spot of highest
contrast near its expected place. The closed eye is drawn in pixel space (an upper lid of the skin
below the eye coming down, a dark lash line where it meets the lower lid), VAE-encoded once, and
its difference to the open eyes is kept only on the latent cells it changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.conditioning.mouth import MouthBox

#################################################################################
#                              Placing the eyes                                 #
#################################################################################

# Eye centre and size in mouth widths from the closed mouth's centre (faces-v2, mean +- std):
# x +-0.60 (0.09), y -1.18 (0.15), width 0.53 (0.09), opening 0.36 (0.06).
EYE_OFFSET = (0.60, -1.18)
EYE_SIZE = (0.53, 0.36)
SEARCH = 0.15  # refine each eye within this many mouth widths of its expected place
DRIFT_COST = 0.2  # luma std a refined spot must gain per mouth width it moves from the expected place
MIN_CONTRAST = 0.06  # luma std (0..1) an eye must show; below it the picture has no eyes to close there
PROFILE = (0.5, 0.9, 1.0, 0.8, 0.4, 0.1)  # closedness over the frames of one blink (the studio's, 25 fps)
FIRST_S, EVERY_S = (0.3, 2.5), (1.8, 5.5)  # first blink after, and between blinks, uniform seconds


@dataclass(frozen=True)
class Eye:
    """One eye in pixels of the cropped reference: centre and the ellipse's full width and height."""

    x: float
    y: float
    width: float
    height: float


def _luma(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float luma [H, W] in [0, 1]."""
    return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0


def _pixel_centres(height: int, width: int) -> np.ndarray:
    """[2, H, W]: each pixel's centre (y, x)."""
    return np.mgrid[0:height, 0:width].astype(np.float32) + 0.5


def _ellipse(centres: np.ndarray, eye: Eye, grow: float = 1.0) -> np.ndarray:
    """bool [H, W]: the pixels (centres [2, H, W]) inside the eye's ellipse (its radii times `grow`)."""
    yy, xx = centres
    return ((xx - eye.x) / (eye.width / 2 * grow)) ** 2 + ((yy - eye.y) / (eye.height / 2 * grow)) ** 2 <= 1.0


def locate_eyes(image: np.ndarray, mouth: MouthBox) -> tuple[Eye, Eye] | None:
    """The two eyes of a cropped reference uint8 [H, W, 3] with its closed mouth at `mouth`; None when either
    expected place shows no eye (too little contrast) or falls outside the picture."""
    height, width = image.shape[:2]
    luma = _luma(image)
    centres = _pixel_centres(height, width)
    mw = mouth.width * width
    eyes = []
    for side in (-1.0, 1.0):
        x0, y0 = mouth.x * width + side * EYE_OFFSET[0] * mw, mouth.y * height + EYE_OFFSET[1] * mw
        w, h = EYE_SIZE[0] * mw, EYE_SIZE[1] * mw
        best: tuple[float, Eye] | None = None
        step = max(1.0, mw * SEARCH / 4)
        for dy in np.arange(-SEARCH * mw, SEARCH * mw + 1e-6, step):
            for dx in np.arange(-SEARCH * mw, SEARCH * mw + 1e-6, step):
                eye = Eye(float(x0 + dx), float(y0 + dy), float(w), float(h))
                if not (w / 2 <= eye.x <= width - w / 2 and h <= eye.y <= height - 2 * h):
                    continue
                inside = _ellipse(centres, eye)
                contrast = float(luma[inside].std()) if inside.sum() >= 4 else 0.0
                score = contrast - DRIFT_COST * float(np.hypot(dx, dy)) / mw
                if contrast >= MIN_CONTRAST and (best is None or score > best[0]):
                    best = (score, eye)
        if best is None:
            return None
        eyes.append(best[1])
    return eyes[0], eyes[1]


#################################################################################
#                               Closing the eyes                                #
#################################################################################

def close_eyes(image: np.ndarray, eyes: tuple[Eye, Eye]) -> np.ndarray:
    """uint8 [H, W, 3] -> the same face with both eyes shut: each eye's ellipse (grown a little) filled with
    the skin just below it, and a dark lash line along its lower third."""
    height, width = image.shape[:2]
    out = image.astype(np.float32)
    centres = _pixel_centres(height, width)
    yy = centres[0]
    for eye in eyes:
        lid = _ellipse(centres, eye, grow=1.25)
        below = ~_ellipse(centres, eye, grow=1.5) & _ellipse(centres, Eye(eye.x, eye.y + eye.height, eye.width, eye.height))
        skin = np.median(out[below], axis=0) if below.any() else np.median(out[lid], axis=0)
        out[lid] = skin
        line = lid & (np.abs(yy - (eye.y + eye.height * 0.2)) <= max(0.6, eye.height * 0.12))
        out[line] = skin * 0.35
    return out.round().clip(0, 255).astype(np.uint8)


#################################################################################
#                          The blink in latent space                            #
#################################################################################

@dataclass
class BlinkBank:
    """The latent change that shuts an avatar's eyes, zero outside the cells it reaches."""

    delta: torch.Tensor  # [C, h, w]: closed-eyes latent minus open-eyes latent, on the eye cells
    eyes: tuple[Eye, Eye]

    def apply(self, guide: torch.Tensor, closedness: torch.Tensor) -> torch.Tensor:
        """Guide latents [F, C, h, w] + closedness [F] in [0, 1] -> the guide with the eyes that shut."""
        return guide + closedness.to(guide)[:, None, None, None] * self.delta.to(guide)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "BlinkBank":
        return BlinkBank(delta=self.delta.to(device, dtype), eyes=self.eyes)


@torch.no_grad()
def build_blink_bank(image: np.ndarray, eyes: tuple[Eye, Eye], open_latent: torch.Tensor, encode,
                     cell_threshold: float) -> BlinkBank:
    """Reference uint8 [H, W, 3] + its eyes + its latent [C, h, w] -> a BlinkBank; `encode` maps uint8
    frames [K, 3, H, W] to latents (FrameVAE.encode). One VAE call per avatar."""
    shut = torch.from_numpy(close_eyes(image, eyes)).permute(2, 0, 1)[None]  # [1, 3, H, W]
    delta = encode(shut).float()[0] - open_latent.float()  # [C, h, w]
    cells = delta.abs().sum(0) > cell_threshold  # [h, w]: the cells the shut eyes change
    return BlinkBank(delta=delta * cells, eyes=eyes)


class BlinkSchedule:
    """When a stream blinks: the first blink after FIRST_S, then every EVERY_S (uniform, from the stream's
    seed), each over the frames of PROFILE. Deterministic per seed, whatever the chunking."""

    def __init__(self, seed: int, fps: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._fps = fps
        self._starts = [int(self._rng.uniform(*FIRST_S) * fps)]

    def closedness(self, first_frame: int, frames: int) -> torch.Tensor:
        """Closedness [frames] in [0, 1] of frames first_frame .. first_frame + frames - 1."""
        last = first_frame + frames
        while self._starts[-1] < last:
            self._starts.append(self._starts[-1] + int(self._rng.uniform(*EVERY_S) * self._fps))
        out = np.zeros(frames, dtype=np.float32)
        for start in self._starts:
            for k, value in enumerate(PROFILE):
                if first_frame <= start + k < last:
                    out[start + k - first_frame] = value
        return torch.from_numpy(out)
