"""Audio -> motion: mouth openness per video frame from that frame's audio window (past frames, itself
and the window's look-ahead of at most one frame), the streaming pose signal that drives the mouth guide."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

LOGMEL_MEAN = -8.8  # log-mel statistics of studio speech: inputs are standardised with them
LOGMEL_STD = 3.0


class MouthMotion(ModelMixin, ConfigMixin):
    """Per-frame audio windows [..., W, K, A] -> mouth openness [...] in [0, 1] (0 shut, 1 wide open)."""

    @register_to_config
    def __init__(self, window_frames: int = 4, frames_per_video_frame: int = 4, feature_dim: int = 40,
                 hidden_size: int = 128, feature_mean: float = LOGMEL_MEAN, feature_std: float = LOGMEL_STD):
        super().__init__()
        inputs = window_frames * frames_per_video_frame * feature_dim
        self.net = nn.Sequential(nn.Linear(inputs, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size),
                                 nn.SiLU(), nn.Linear(hidden_size, 1))

    def logits(self, windows: torch.Tensor) -> torch.Tensor:
        """Windows [..., W, K, A] -> openness logits [...]."""
        c = self.config
        shape = (c.window_frames, c.frames_per_video_frame, c.feature_dim)
        if tuple(windows.shape[-3:]) != shape:
            raise ValueError(f"audio windows must end in {list(shape)}, got {list(windows.shape)}")
        x = (windows.to(self.net[0].weight.dtype) - c.feature_mean) / c.feature_std
        return self.net(x.flatten(-3)).squeeze(-1)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Windows [..., W, K, A] -> openness [...] in [0, 1]."""
        return torch.sigmoid(self.logits(windows))
