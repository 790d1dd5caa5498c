"""Per-clip condition features for the cache, computed by the same functions inference uses."""

from __future__ import annotations

import numpy as np
import torch

from model.conditioning.audio import clip_audio_windows
from model.conditioning.heatmaps import render_heatmaps
from model.config import ModelConfig


def clip_audio_features(pcm: np.ndarray, num_frames: int, config: ModelConfig) -> torch.Tensor:
    """A clip's 16 kHz PCM -> audio windows [T, W, K, A] of every video frame (past + look-ahead)."""
    return clip_audio_windows(torch.from_numpy(np.asarray(pcm, dtype=np.float32)), config, num_frames)


def clip_heatmaps(xy: np.ndarray, visibility: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Keypoints [T, K, 2] in [0, 1] + visibility [T, K] -> heatmaps [T, G, height, width] at latent size."""
    return torch.as_tensor(render_heatmaps(xy, visibility, height, width)).float()
