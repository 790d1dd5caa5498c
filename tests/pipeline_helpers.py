"""Shared helpers for pipeline/CLI tests: a micro model config (fast on 2 cores) and test signals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from model.conditioning.heatmaps import NUM_HEATMAP_CHANNELS
from model.config import ModelConfig, load_model_config
from model.pipeline import AvatarPipeline

MICRO_OVERRIDES = {
    "name": "micro",
    "dit": {"hidden_size": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, "pose_guider_channels": 8,
            "pose_channels": NUM_HEATMAP_CHANNELS, "concat_guide": False, "prediction": "velocity"},
    "vae": {"encoder_block_out_channels": [8, 8, 8, 8], "decoder_block_out_channels": [8, 8, 8, 8]},
    "video": {"height": 64, "width": 64},
}


def micro_config_dict() -> dict:
    """The tiny config with small widths and 64x64 frames (same structure, much less compute)."""
    data = load_model_config("tiny").model_dump(mode="json")
    for key, value in MICRO_OVERRIDES.items():
        if isinstance(value, dict):
            data[key].update(value)
        else:
            data[key] = value
    return data


def micro_config() -> ModelConfig:
    return ModelConfig.model_validate(micro_config_dict())


def micro_guide_config() -> ModelConfig:
    """The micro config as a guide model (mouth guide channels, guide-relative prediction), like tiny."""
    data = micro_config_dict()
    data["dit"].update(concat_guide=True, prediction="guide_residual")
    return ModelConfig.model_validate(data)


def write_micro_yaml(path: Path) -> Path:
    path.write_text(yaml.safe_dump(micro_config_dict()))
    return path


def speech_like(seconds: float, seed: int = 0, sample_rate: int = 16000) -> np.ndarray:
    """A deterministic voiced-like signal: harmonics with a syllable-rate envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t + seed))
    return (0.2 * voice * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def reference_image(height: int = 90, width: int = 70, seed: int = 0) -> np.ndarray:
    """A deterministic uint8 [H, W, 3] test image (smooth gradients + a disc)."""
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=3)
    image = np.stack([base[0] + 50 * yy / height, base[1] + 50 * xx / width, base[2] + 0 * xx], axis=-1)
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(height, width) / 4) ** 2
    image[disc] = [230, 190, 160]
    return np.clip(image, 0, 255).astype(np.uint8)


def with_guide(pipe: AvatarPipeline, **changes: object) -> AvatarPipeline:
    """The pipeline with its model config's guide section changed (e.g. head_motion=False), for later references."""
    guide = pipe.model_config.guide.model_copy(update=changes)
    pipe.model_config = pipe.model_config.model_copy(update={"guide": guide})
    return pipe


def dot_image(size: int, x: int, y: int) -> np.ndarray:
    """uint8 [1, size, size, 3]: grey, a white 4x4 dot whose top-left pixel is (x, y), a black 3x3 top-left corner."""
    image = np.full((1, size, size, 3), 128, np.uint8)
    image[0, y:y + 4, x:x + 4] = 255
    image[0, :3, :3] = 0
    return image


def dot_centre(frame: np.ndarray) -> np.ndarray:
    """(x, y) pixel centre of the bright dot of a uint8 frame [H, W, 3]."""
    ys, xs = np.nonzero(frame[..., 0] > 190)
    return np.array([xs.mean(), ys.mean()])
