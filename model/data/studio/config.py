"""Typed settings of the synthetic studio (defaults here; `omnilive synth --config x.yaml` overrides)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from model.yaml_config import load_yaml_config


class StudioConfig(BaseModel):
    """Everything that shapes a synthetic dataset besides the seed and the clip count."""

    fps: int = 25
    sample_rate: int = 16000
    short_side: int = Field(256, ge=64, le=1024, description="output short side in pixels")
    size_multiple: int = Field(16, description="width and height are rounded to a multiple of this")
    supersample: int = Field(2, ge=1, le=4, description="render this much larger, then box-downsample")
    crf: int = Field(18, ge=0, le=51, description="H.264 quality of video.mp4")
    min_seconds: float = 3.0
    max_seconds: float = 6.0
    clips_per_identity: int = Field(4, ge=1, description="consecutive clips that share one identity")
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    mostly_silent_probability: float = 0.12
    flite_probability: float = 0.3
    framing_weights: dict[str, float] = Field(
        default_factory=lambda: {"face": 0.2, "portrait": 0.3, "half_body": 0.35, "full_body": 0.15})
    aspect_weights: dict[str, float] = Field(
        default_factory=lambda: {"1:1": 0.3, "3:4": 0.25, "9:16": 0.25, "16:9": 0.2})
    index_every: int = Field(20, ge=1, description="rewrite index.json after this many finished clips")


def load_studio_config(path: str | Path | None) -> StudioConfig:
    """Defaults, overridden by a YAML file when given."""
    return StudioConfig() if path is None else load_yaml_config(StudioConfig, path, "studio config")
