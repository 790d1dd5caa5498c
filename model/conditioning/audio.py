"""Audio conditioning: streaming log-mel, per-video-frame windows, the trainable AudioEncoder."""

from __future__ import annotations

import torch
from torch import nn


class AudioEncoder(nn.Module):
    """Per-video-frame features -> MLP -> hidden tokens, one per neighbour frame of the window.

    Each chunk frame gets its own window (past, itself, look-ahead); every window frame becomes one
    token tagged with a learned offset embedding, and the DiT cross-attends to those tokens.
    """

    def __init__(self, feature_dim: int, frames_per_video_frame: int, window_frames: int, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim * frames_per_video_frame, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.offset_embedding = nn.Parameter(torch.zeros(window_frames, hidden_size))
        nn.init.normal_(self.offset_embedding, std=0.02)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [B, F, W, K, A] (K feature frames of dim A per video frame) -> [B, F, W, D]."""
        b, f, w, k, a = windows.shape
        tokens = self.mlp(windows.reshape(b, f, w, k * a))
        return tokens + self.offset_embedding
