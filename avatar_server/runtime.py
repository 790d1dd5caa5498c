"""Loading the model for the server: the only place that imports model.pipeline."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from avatar_server.settings import ModelSettings, ServerSettings

logger = logging.getLogger(__name__)


@dataclass
class PipelineHandle:
    """A loaded pipeline plus how to build its per-stream options."""

    pipe: Any
    make_options: Callable[..., Any]  # (text, seed, steps, guidance) -> StreamOptions
    source: str                       # what was loaded, for the log (may hold a filesystem path)
    device: str
    pose_keypoints: int = 0           # keypoints in a pose command; 0: the model takes no pose
    name: str = ""                    # what was loaded without paths, for /readyz

    @property
    def public_name(self) -> str:
        """The model's name for clients: never a filesystem path."""
        return self.name or self.source


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(settings: ServerSettings) -> PipelineHandle:
    """The configured checkpoint; a random-init model of `model.config` when it is missing (loudly)."""
    from model.data.keypoints import NUM_KEYPOINTS
    from model.pipeline import AvatarPipeline, StreamOptions

    model: ModelSettings = settings.model
    device = resolve_device(model.device)
    weights = settings.path(model.weights) if model.weights else None
    if weights is not None and weights.is_dir():
        pipe = AvatarPipeline.from_pretrained(str(weights), device=device)
        source, name = f"weights {weights}", f"weights {weights.name}"
    else:
        logger.warning(
            "no trained weights at %s: serving a RANDOMLY INITIALISED %r model (it moves but does not look like the "
            "avatar). Train one with `omnilive train` or set model.weights in the server config.", weights, model.config)
        pipe = AvatarPipeline.from_config(model.config, device=device)
        source = name = f"random-init {model.config}"
    pipe.set_decode_precision(model.decode_precision)
    logger.info("model: %s on %s (%dx%d @ %d fps, %d-frame chunks, %d steps)", source, device,
                pipe.config.width, pipe.config.height, pipe.config.fps, pipe.config.chunk_frames, pipe.config.steps)
    pose_keypoints = NUM_KEYPOINTS if pipe.dit.config.pose_channels > 0 else 0
    return PipelineHandle(pipe=pipe, make_options=StreamOptions, source=source, device=device,
                          pose_keypoints=pose_keypoints, name=name)
