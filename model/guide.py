"""The mouth guide: a per-avatar bank of VAE latents of the reference with its mouth opened to several
openings (drawn once, when the avatar is registered), blended per frame by the predicted openness.

The DiT copies what is spatially in front of it long before it learns to draw a region from a
condition, so the mouth reaches it as a picture in its own latent space: the guide latent of each
chunk frame already shows the target opening in the avatar's appearance, and the DiT predicts the
clean latent relative to it (see model/flow.py, prediction "guide_residual").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.conditioning.mouth import MouthBox

#################################################################################
#                          Drawing an opened mouth                              #
#################################################################################

MOUTH_INSIDE = (0.27, 0.09, 0.11)  # RGB in [0, 1]: the dark of an open mouth
TEETH = (0.93, 0.92, 0.89)
MAX_GAP = 0.6  # lip gap of a fully open mouth, in mouth widths (the studio's inner lips reach 0.62)
JAW_REACH = 2.2  # the jaw below the mouth follows the lower lip over this many mouth widths
STRETCH = (-0.2, 0.8)  # the lip line stretches over this band (mouth widths around it): long enough not to fold


def _smoothstep(edge0: float, edge1: float, x: torch.Tensor) -> torch.Tensor:
    """0 below edge0, 1 above edge1, smooth in between."""
    t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return t * t * (3 - 2 * t)


def open_mouth(image: torch.Tensor, box: MouthBox, amount: float) -> torch.Tensor:
    """Image [3, H, W] in [0, 1] with its closed mouth at `box` -> the same face with the mouth opened
    by `amount` in [0, 1]: lower lip and jaw pulled down, the gap filled with a dark mouth and teeth."""
    _, height, width = image.shape
    if amount <= 0.0:
        return image.clone()
    cx, cy, mw = box.x * width, box.y * height, box.width * width
    gap = MAX_GAP * mw * min(amount, 1.0)
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                            torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")  # [H, W]
    across = 1.0 - _smoothstep(0.55 * mw, 1.3 * mw, (xx - cx).abs())  # 1 under the mouth, 0 beyond the jaw
    stretch = _smoothstep(STRETCH[0] * mw, STRETCH[1] * mw, yy - cy)  # 0 above the lips, 1 below the lower lip
    below = 1.0 - _smoothstep(STRETCH[1] * mw, JAW_REACH * mw, yy - cy)  # the jaw's shift fades down the chin
    shift = gap * across * stretch * below  # [H, W] pixels moved down
    grid = torch.stack([xx / width * 2 - 1, (yy - shift) / height * 2 - 1], dim=-1)  # [H, W, 2] as (x, y)
    warped = F.grid_sample(image[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False)[0]
    # the gap: an ellipse of mouth interior between the upper lip (at cy) and the moved lower lip (cy + gap)
    rx, ry = 0.42 * mw * (1.0 - 0.15 * amount), gap / 2 + 0.5
    inside = ((xx - cx) / rx) ** 2 + ((yy - (cy + gap / 2)) / ry) ** 2  # < 1 inside the ellipse
    mouth = (1.0 - _smoothstep(0.7, 1.0, inside))[None]  # [1, H, W], soft edge
    teeth = ((yy < cy + 0.28 * gap) & (inside < 0.8)).float()[None] * min(1.0, 2 * amount)
    colour = torch.tensor(MOUTH_INSIDE)[:, None, None] * (1 - teeth) + torch.tensor(TEETH)[:, None, None] * teeth
    return warped * (1 - mouth) + colour * mouth


#################################################################################
#                                 MouthBank                                     #
#################################################################################


@dataclass
class MouthBank:
    """Latents of one avatar at K mouth openings (0 = the reference itself) and its mouth cells."""

    latents: torch.Tensor  # [K, C, h, w]
    openings: torch.Tensor  # [K] increasing, from 0 to 1
    mouth_cells: torch.Tensor  # [h, w] bool: latent cells the mouth can reach (hidden from reference/context)
    box: MouthBox

    @property
    def closed(self) -> torch.Tensor:
        """The closed-mouth latent [C, h, w] (the reference)."""
        return self.latents[0]

    def blend(self, openness: torch.Tensor) -> torch.Tensor:
        """Openness [F] in [0, 1] -> guide latents [F, C, h, w], linear between neighbouring openings."""
        return blend_openings(self.latents, self.openings, openness)

    def hide_mouth(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [..., C, h, w] with the mouth cells zeroed: the guide stays the only source of the mouth."""
        return latents.masked_fill(self.mouth_cells.to(latents.device), 0.0)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "MouthBank":
        return MouthBank(latents=self.latents.to(device, dtype), openings=self.openings.to(device),
                         mouth_cells=self.mouth_cells.to(device), box=self.box)


def mouth_cells(latents: torch.Tensor, threshold: float, grow: int = 1) -> torch.Tensor:
    """Bank latents [K, C, h, w] -> [h, w] bool: cells that change between openings, grown by `grow` cells."""
    change = (latents - latents[:1]).abs().sum(1).amax(0)  # [h, w]
    cells = (change > threshold).float()[None, None]
    if grow:
        cells = F.max_pool2d(cells, kernel_size=2 * grow + 1, stride=1, padding=grow)
    return cells[0, 0] > 0


def blend_openings(table: torch.Tensor, openings: torch.Tensor, openness: torch.Tensor) -> torch.Tensor:
    """A table [K, ...] of one entry per opening (increasing, 0 to 1) at openness [F] -> [F, ...], linear
    between neighbouring openings."""
    openings = openings.to(table.device)
    o = openness.to(table.device, openings.dtype).clamp(0.0, 1.0)
    upper = torch.searchsorted(openings, o).clamp(1, len(openings) - 1)  # [F]
    lo, hi = openings[upper - 1], openings[upper]
    w = ((o - lo) / (hi - lo)).to(table.dtype).reshape(-1, *[1] * (table.ndim - 1))  # [F, 1, ...]
    return table[upper - 1] * (1 - w) + table[upper] * w


def draw_openings(image: np.ndarray, box: MouthBox, levels: torch.Tensor) -> torch.Tensor:
    """Reference uint8 [H, W, 3] -> uint8 [K, 3, H, W]: the face with its mouth opened to each of `levels`."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0  # [3, H, W]
    drawn = torch.stack([open_mouth(pixels, box, float(a)) for a in levels])  # [K, 3, H, W]
    return (drawn * 255.0).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def build_mouth_bank(image: np.ndarray, box: MouthBox, encode, openings: int = 5,
                     cell_threshold: float = 0.15) -> MouthBank:
    """Reference uint8 [H, W, 3] + its mouth -> a MouthBank; `encode` maps uint8 frames [K, 3, H, W]
    to latents [K, C, h, w] (FrameVAE.encode). One VAE batch per avatar, none per frame."""
    levels = torch.linspace(0.0, 1.0, openings)
    latents = encode(draw_openings(image, box, levels)).float()
    return MouthBank(latents=latents, openings=levels, mouth_cells=mouth_cells(latents, cell_threshold), box=box)
