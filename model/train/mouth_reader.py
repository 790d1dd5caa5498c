"""MouthReader: a small CNN that reads how open a mouth is from the pixels around it (an evaluation instrument).

The dark-pixel measure (metrics.mouth_openness) counts pixels darker than the lip box's median; a beard, dark
lips or teeth fool it. The reader is trained on the studio's face close-ups against their keypoint openness
(`mouth_open`, 0 = shut, 1 = wide open), half of them passed through a VAE so that it reads decoded frames as
well, and it reads any frame the same way: ground truth, a VAE round trip, a generated stream.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

Box = tuple[int, int, int, int]


def mouth_crops(frames: np.ndarray, boxes: np.ndarray | torch.Tensor | list[Box], height: int, width: int) -> torch.Tensor:
    """uint8 frames [N, H, W, 3] and pixel boxes [N, 4] (x0, y0, x1, y1; metrics.mouth_box) -> crops
    [N, 3, height, width] in [-1, 1], each the box's width around its centre at the crop's aspect."""
    n, image_h, image_w = frames.shape[:3]
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1  # [N, 3, H, W]
    box = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(n, 4)
    centre_x, centre_y = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    half_w = (box[:, 2] - box[:, 0]).clamp(min=1.0) / 2
    half_h = half_w * height / width
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = half_w / (image_w / 2), half_h / (image_h / 2)
    theta[:, 0, 2], theta[:, 1, 2] = centre_x / (image_w / 2) - 1, centre_y / (image_h / 2) - 1
    grid = F.affine_grid(theta, [n, 3, height, width], align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


class MouthReader(ModelMixin, ConfigMixin):
    """Mouth crop [B, 3, h, w] -> openness [B]: four 3x3 convolutions (three of stride 2), a mean pool, a line."""

    @register_to_config
    def __init__(self, crop_height: int = 24, crop_width: int = 32, channels: tuple[int, ...] = (16, 32, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        widths = (3, *channels)
        for index in range(len(channels)):
            layers += [nn.Conv2d(widths[index], widths[index + 1], 3, stride=1 if index == 0 else 2, padding=1), nn.SiLU()]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels[-1], 1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(crops)).squeeze(1)

    @torch.no_grad()
    def read(self, frames: np.ndarray, boxes: list[Box] | np.ndarray, batch: int = 256) -> np.ndarray:
        """Openness float64 [N] of uint8 frames [N, H, W, 3] in their mouth boxes [N, 4]."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(len(frames), 4)
        out = []
        for start in range(0, len(frames), batch):
            crops = mouth_crops(frames[start:start + batch], boxes[start:start + batch],
                                self.config.crop_height, self.config.crop_width)
            out.append(self(crops.to(self.device, self.dtype)).float().cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)
