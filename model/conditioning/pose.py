"""PoseGuider: heatmaps of neighbouring frames -> latent-resolution channels for the DiT input."""

from __future__ import annotations

import torch
from torch import nn


class PoseGuider(nn.Module):
    """Small conv net on each frame's heatmaps stacked with its neighbours' (edges replicated).

    Its output is concatenated with the noisy latent along channels; the last conv starts at zero
    so an untrained guider leaves the backbone unchanged.
    """

    def __init__(self, pose_channels: int, neighbor_frames: int, hidden_channels: int, out_channels: int):
        super().__init__()
        self.neighbor_frames = neighbor_frames
        in_channels = pose_channels * (2 * neighbor_frames + 1)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """heatmaps [B, F, G, h, w] -> pose features [B, F, out_channels, h, w]."""
        b, f, g, h, w = heatmaps.shape
        r = self.neighbor_frames
        idx = torch.arange(f, device=heatmaps.device)
        offsets = torch.arange(-r, r + 1, device=heatmaps.device)
        neighbors = (idx[:, None] + offsets[None, :]).clamp(0, f - 1)  # [F, 2r+1]
        stacked = heatmaps[:, neighbors]  # [B, F, 2r+1, G, h, w]
        stacked = stacked.reshape(b * f, (2 * r + 1) * g, h, w)
        return self.net(stacked).reshape(b, f, -1, h, w)
