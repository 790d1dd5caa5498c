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


def gated_windows(windows: torch.Tensor, voiced: torch.Tensor | None, silence: torch.Tensor, past: int,
                  frames: torch.Tensor | None = None) -> torch.Tensor:
    """A clip's audio windows [T, W, K, A] (only rows `frames` [F], when given) with the slots of unvoiced
    frames (voiced [T] bool) replaced by silence features [K, A], as the server's VAD gates a live session."""
    t, w = windows.shape[:2]
    frames = torch.arange(t) if frames is None else frames
    picked = windows[frames]
    if voiced is None:
        return picked
    source = frames[:, None] - past + torch.arange(w)[None]  # [F, W] frame of each slot
    inside = (source >= 0) & (source < t)
    slot_voiced = torch.where(inside, voiced[source.clamp(0, t - 1)], torch.ones_like(inside))
    return torch.where(slot_voiced[..., None, None], picked, silence.to(picked.dtype))
