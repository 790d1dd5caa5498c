"""Studio stills with their person matte (which pixels are the person, which the backdrop), for PersonMatte.

Each identity is drawn at a few moments of a clip's motion (head sway, nods, looking around, mouth), over
its own backdrop, with the person's exact coverage from `Painter.coverage`. Identities come from their own
seed, so a matte set never shares a person with a dataset rendered from another seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.data.studio.camera import frame_camera
from model.data.studio.captions import sample_style
from model.data.studio.config import StudioConfig
from model.data.studio.drawing import Painter
from model.data.studio.identity import sample_identity
from model.data.studio.motion import motion_from_audio
from model.data.studio.render import _IDENTITY_STREAM, identity_id
from model.data.studio.rig import Rig

_MATTE_STREAM = 3                         # the stills' random stream (seed, stream, index), beside render.py's
MOTION_SECONDS = 6.0                      # the stretch of motion each identity's stills are taken from


@dataclass
class MatteSet:
    """Square stills and their person coverage."""

    frames: np.ndarray  # uint8 [N, S, S, 3]
    alpha: np.ndarray   # uint8 [N, S, S], 255 = all person


def _voice_like(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Noise in syllable-sized bursts with pauses: drives the studio's motion (mouth, nods) without a TTS voice."""
    samples = int(MOTION_SECONDS * sample_rate)
    t = np.arange(samples) / sample_rate
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2.5, 5.0) * t + rng.uniform(0, 6.3)), 0, None)
    envelope *= np.sin(2 * np.pi * rng.uniform(0.15, 0.4) * t + rng.uniform(0, 6.3)) > -0.3  # pauses
    return (0.3 * envelope * rng.standard_normal(samples)).astype(np.float32)


def matte_set(seed: int, identities: int, stills_per_identity: int, config: StudioConfig) -> MatteSet:
    """`stills_per_identity` square stills (config.short_side px, framings by config.framing_weights) of each of
    `identities` studio people of `seed`."""
    size = config.short_side
    framings = sorted(config.framing_weights)
    weights = np.array([config.framing_weights[f] for f in framings], dtype=np.float64)
    frames, alpha = [], []
    for index in range(identities):
        rng = np.random.default_rng([seed, _MATTE_STREAM, index])
        identity = sample_identity(np.random.default_rng([seed, _IDENTITY_STREAM, index]), identity_id(seed, index))
        motion = motion_from_audio(rng, _voice_like(rng, config.sample_rate), config.sample_rate, config.fps,
                                   sample_style(rng))
        rig = Rig(identity)
        framing = str(rng.choice(framings, p=weights / weights.sum()))
        painter = Painter(identity, frame_camera(rig, framing, size, size, rng), config.supersample, rng)
        moments = rng.choice(len(motion.mouth_open), size=stills_per_identity, replace=False)
        for t in np.sort(moments):
            pose = rig.pose(motion, int(t))
            frames.append(painter.draw(pose))
            alpha.append(np.round(painter.coverage(pose) * 255).astype(np.uint8))
    return MatteSet(np.stack(frames), np.stack(alpha))
