"""MouthLocator: a small CNN that finds the closed mouth (MouthBox) on an avatar reference image."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from PIL import Image
from torch import nn

from model.conditioning.mouth import MouthBox
from model.errors import InputError
from model.media import cover_crop

logger = logging.getLogger(__name__)


#################################################################################
#                                  Image input                                  #
#################################################################################


def crop_square(image: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """Any RGB image -> uint8 [size, size, 3]: resize to cover, then center-crop (the pipeline's reference crop)."""
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise InputError(f"image must be [H, W], [H, W, 3] or [H, W, 4], got {list(image.shape)}")
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
                raise InputError(f"image must hold finite numbers, got dtype {array.dtype}")
            scale = 255.0 if array.size and float(array.max()) <= 1.0 else 1.0
            array = np.clip(np.asarray(array, np.float32) * scale, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(array)
    if not isinstance(image, Image.Image):
        raise InputError(f"image must be a numpy array or a PIL image, got {type(image).__name__}")
    if image.width < 8 or image.height < 8:
        raise InputError(f"image is too small to hold a face ({image.width}x{image.height})")
    return cover_crop(image.convert("RGB"), size, size)


def to_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] (numpy) or [B, 3, H, W] (torch) -> float [B, 3, H, W] in [-1, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return images.float() / 127.5 - 1.0


#################################################################################
#                                    Layers                                     #
#################################################################################


class ConvBlock(nn.Module):
    """3x3 convolution (stride 2 halves the grid) -> GroupNorm -> SiLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(math.gcd(groups, out_channels), out_channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


#################################################################################
#                                 Mouth Locator                                 #
#################################################################################


class MouthLocator(ModelMixin, ConfigMixin):
    """Image -> (x, y, width) of the closed mouth's lip line, plus a "there is a face mouth" logit.

    Five stride-2 convolutions (128 -> 4). The centre comes from a soft-argmax over the stride-16
    grid (a heatmap logit and a sub-cell offset per cell): position stays translation-equivariant,
    which a global pool would lose. Width (as a log) and the confidence logit come from the
    mean- and max-pooled stride-32 features.
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 128,
        channels: tuple[int, ...] = (16, 32, 48, 64, 64),
        heatmap_level: int = 4,
        groups: int = 8,
        width_prior: float = 0.15,
        min_confidence: float = 0.5,
        min_width: float = 0.03,
        max_width: float = 0.6,
    ):
        super().__init__()
        if not 1 <= heatmap_level <= len(channels):
            raise ValueError(f"heatmap_level must be in 1..{len(channels)}, got {heatmap_level}")
        widths = (3, *channels)
        self.blocks = nn.ModuleList(ConvBlock(widths[i], widths[i + 1], 2, groups) for i in range(len(channels)))
        self.heatmap_head = nn.Sequential(
            nn.Conv2d(channels[heatmap_level - 1], channels[heatmap_level - 1], 3, padding=1), nn.SiLU(),
            nn.Conv2d(channels[heatmap_level - 1], 3, 1),  # heatmap logit, dx, dy (in cells)
        )
        self.global_head = nn.Linear(2 * channels[-1], 2)  # log(width / prior), confidence logit
        nn.init.zeros_(self.global_head.weight)
        nn.init.zeros_(self.global_head.bias)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """pixels [B, 3, S, S] in [-1, 1] -> {"box": [B, 3] (x, y, width), "logit": [B], "heatmap": [B, h, w]}."""
        x, hidden = pixels, None
        for level, block in enumerate(self.blocks, start=1):
            x = block(x)
            if level == self.config.heatmap_level:
                hidden = x  # [B, C, h, w]
        head = self.heatmap_head(hidden)  # [B, 3, h, w]
        batch, _, h, w = head.shape
        weights = head[:, 0].flatten(1).softmax(-1)  # [B, h * w]
        cell_y, cell_x = torch.meshgrid(
            torch.arange(h, device=head.device, dtype=head.dtype), torch.arange(w, device=head.device, dtype=head.dtype),
            indexing="ij")
        px = (cell_x + 0.5 + head[:, 1].tanh()) / w  # [B, h, w] each cell's centre vote, in [0, 1] image units
        py = (cell_y + 0.5 + head[:, 2].tanh()) / h
        cx = (weights * px.flatten(1)).sum(-1)  # [B]
        cy = (weights * py.flatten(1)).sum(-1)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)  # [B, 2C]
        log_width, logit = self.global_head(pooled).unbind(-1)  # [B] each
        width = self.config.width_prior * log_width.clamp(-4.0, 4.0).exp()
        return {"box": torch.stack([cx, cy, width], dim=-1), "logit": logit,
                "heatmap": head[:, 0].reshape(batch, h, w)}

    # ---------------------------------------------------------------- inference

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [B, S, S, 3] at the model size -> (boxes [B, 3] float32, confidences [B] in [0, 1])."""
        device = next(self.parameters()).device
        out = self(to_pixels(images).to(device))
        return out["box"].float().cpu().numpy(), out["logit"].float().sigmoid().cpu().numpy()

    def locate(self, image: np.ndarray | Image.Image) -> MouthBox:
        """One reference image (uint8 RGB, any size) -> MouthBox on its center-cropped model-size square.

        Raises InputError when no face mouth is found (low confidence) or the box is implausible.
        """
        square = crop_square(image, self.config.image_size)  # uint8 [S, S, 3]
        was_training = self.training
        self.eval()
        try:
            boxes, confidences = self.predict(square[None])
        finally:
            self.train(was_training)
        (x, y, width), confidence = boxes[0].tolist(), float(confidences[0])
        logger.debug("mouth locator: x=%.3f y=%.3f width=%.3f confidence=%.3f", x, y, width, confidence)
        if confidence < self.config.min_confidence:
            raise InputError(
                f"no face mouth found on the image (confidence {confidence:.2f} < {self.config.min_confidence}): "
                "use a front-facing face close-up like the studio avatars, with the mouth visible")
        if not (0.02 <= x <= 0.98 and 0.02 <= y <= 0.98):
            raise InputError(f"the mouth found lies at the image edge ({x:.2f}, {y:.2f}): use an image with the whole face in it")
        if not self.config.min_width <= width <= self.config.max_width:
            raise InputError(
                f"the mouth found is implausibly {'small' if width < self.config.min_width else 'large'} "
                f"(width {width:.3f} of the image, expected {self.config.min_width}..{self.config.max_width})")
        return MouthBox(x=float(x), y=float(y), width=float(width))
