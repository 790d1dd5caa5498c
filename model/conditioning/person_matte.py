"""PersonMatte: a small U-Net that tells the person from the backdrop on an avatar reference image.

The head warp (model/pose_warp.py) moves the person; with the matte the backdrop behind it stays still, as a
real room does when someone sways in front of it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from model.conditioning.mouth_locator import ConvBlock, to_pixels


class UpBlock(nn.Module):
    """x2 upsample, concatenate the encoder's features of that size, 3x3 convolution -> GroupNorm -> SiLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.block = ConvBlock(in_channels + skip_channels, out_channels, 1, groups)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([x, skip], dim=1))


class PersonMatte(ModelMixin, ConfigMixin):
    """Image [B, 3, S, S] -> person logit [B, 1, S, S]: four stride-2 convolutions down (S -> S/16, which sees
    the whole picture), four upsampling blocks back with the skips."""

    @register_to_config
    def __init__(self, image_size: int = 128, channels: tuple[int, ...] = (16, 32, 48, 64), groups: int = 8):
        super().__init__()
        widths = (3, *channels)
        self.down = nn.ModuleList(ConvBlock(widths[i], widths[i + 1], 2, groups) for i in range(len(channels)))
        self.up = nn.ModuleList(UpBlock(widths[i + 1], widths[i], max(widths[i], channels[0]), groups)
                                for i in reversed(range(len(channels))))
        self.head = nn.Conv2d(channels[0], 1, 3, padding=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] in [-1, 1] -> person logits [B, 1, S, S]."""
        skips, x = [pixels], pixels
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()  # the deepest features are x itself
        for block in self.up:
            x = block(x, skips.pop())
        return self.head(x)

    @torch.no_grad()
    def coverage(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] (any size; run at image_size) -> float32 [H, W] in [0, 1], 1 = the person."""
        was_training = self.training
        self.eval()
        try:
            size = self.config.image_size
            pixels = F.interpolate(to_pixels(image[None]), size=(size, size), mode="bilinear", antialias=True,
                                   align_corners=False)  # [1, 3, S, S]
            logits = F.interpolate(self(pixels.to(self.device)).float().cpu(), size=image.shape[:2], mode="bilinear",
                                   align_corners=False)  # [1, 1, H, W]
        finally:
            self.train(was_training)
        return logits[0, 0].sigmoid().numpy()
