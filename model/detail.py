"""Reference detail: the fine texture the small frame VAE loses, laid back onto every decoded frame.

The guide latents are VAE encodings of pictures drawn at full resolution (the avatar with its mouth opened,
its eyes shut: model/guide.py, model/blinks.py). What the VAE loses of each picture is its detail: the
picture minus the decoder's frame of its latent, computed once per avatar beside the banks. A decoded frame
gets back the detail of the guide it was sampled from, blended at the same openness and eye closure, wherever
it shows what that guide decodes to: the weight fades with the frame's blurred change from it, so whatever
the DiT drew of its own is left as the decoder drew it. With a DiT that returns its guide (tiny v3's) every
frame is then the drawn picture itself: a photo avatar stays a photo, not the VAE's painting of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.blinks import BlinkBank, close_eyes
from model.guide import MouthBank, blend_openings, draw_openings

CHANGE_WINDOW = 5  # px: the decoded change is averaged over this square before it fades the detail

Decode = Callable[[torch.Tensor], torch.Tensor]  # latents [N, C, h, w] -> uint8 frames [N, H, W, 3]


def _hwc(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 [N, H, W, 3]."""
    return frames.permute(0, 2, 3, 1).float()


@dataclass(frozen=True)
class ReferenceDetail:
    """One avatar's lost detail per mouth opening (and for shut eyes) and the decoded frames it belongs to."""

    details: torch.Tensor  # float32 [K, H, W, 3]: picture at opening k - its decoded latent (0..255 levels)
    decoded: torch.Tensor  # float32 [K, H, W, 3]: the bank's latents through the decoder
    openings: torch.Tensor  # [K] the mouth bank's openings
    fade: float  # blurred change (0..255 levels) from the decoded guide at which the detail is gone
    blink_details: torch.Tensor | None = None  # [H, W, 3]: what shutting the eyes adds to the detail
    blink_decoded: torch.Tensor | None = None  # [H, W, 3]: what shutting the eyes adds to the decoded frame

    @classmethod
    @torch.no_grad()
    def build(cls, image: np.ndarray, bank: MouthBank, decode: Decode, fade: float,
              blink: BlinkBank | None = None) -> "ReferenceDetail":
        """From the cropped picture uint8 [H, W, 3], its mouth bank (and blink bank) and the VAE's decode."""
        if fade <= 0:
            raise ValueError(f"fade must be > 0, got {fade}")
        pictures = _hwc(draw_openings(image, bank.box, bank.openings.cpu()))  # [K, H, W, 3]
        latents = bank.latents
        if blink is not None:
            latents = torch.cat([latents, latents[:1] + blink.delta.to(latents)])  # the shut eyes, mouth closed
        decoded = decode(latents).float()  # [K (+1), H, W, 3]
        details = pictures - decoded[: len(pictures)]
        blink_details = blink_decoded = None
        if blink is not None:
            shut = torch.from_numpy(close_eyes(image, blink.eyes)).float()  # [H, W, 3]
            blink_decoded = decoded[-1] - decoded[0]
            blink_details = (shut - decoded[-1]) - details[0]
        return cls(details=details, decoded=decoded[: len(pictures)], openings=bank.openings.cpu().float(),
                   fade=fade, blink_details=blink_details, blink_decoded=blink_decoded)

    @property
    def still(self) -> np.ndarray:
        """uint8 [H, W, 3]: the closed-mouth, open-eyed frame with its detail (the avatar's idle image)."""
        return self.apply(self.decoded[:1].to(torch.uint8).numpy())[0]

    @property
    def size(self) -> tuple[int, int]:
        return int(self.details.shape[1]), int(self.details.shape[2])

    def guide(self, openness: torch.Tensor, shut: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Openness [F] (and eye closure [F]) -> (the decoded guide, its detail), each [F, H, W, 3]."""
        decoded = blend_openings(self.decoded, self.openings, openness)
        details = blend_openings(self.details, self.openings, openness)
        if shut is not None and self.blink_details is not None and self.blink_decoded is not None:
            amount = shut.float().reshape(-1, 1, 1, 1)
            decoded = decoded + amount * self.blink_decoded
            details = details + amount * self.blink_details
        return decoded, details

    def apply(self, frames: np.ndarray, openness: np.ndarray | None = None, shut: np.ndarray | None = None) -> np.ndarray:
        """Decoded uint8 frames [F, H, W, 3] (sampled at openness [F] and eye closure [F]; None: 0) -> the same
        with the guide's detail wherever they show the decoded guide."""
        if frames.shape[1:3] != self.size:
            raise ValueError(f"frames {frames.shape[1:3]} do not match the avatar's {self.size}")
        count = len(frames)
        amounts = torch.zeros(count) if openness is None else torch.as_tensor(openness, dtype=torch.float32)
        decoded, details = self.guide(amounts, None if shut is None else torch.as_tensor(shut, dtype=torch.float32))
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).float()  # [F, H, W, 3]
        change = (pixels - decoded).abs().mean(dim=-1)[:, None]  # [F, 1, H, W]
        box = torch.full((1, 1, CHANGE_WINDOW, CHANGE_WINDOW), 1.0 / CHANGE_WINDOW**2)
        change = F.conv2d(change, box, padding=CHANGE_WINDOW // 2)  # the window's mean (a convolution: 2x an avg_pool)
        weight = (1.0 - change / self.fade).clamp(0.0, 1.0).permute(0, 2, 3, 1)  # [F, H, W, 1]
        return (pixels + weight * details).round_().clamp_(0, 255).to(torch.uint8).numpy()
