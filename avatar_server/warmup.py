"""The engine's warm-up: chunks of silence through the model before serving, at each batch size it will run.

The first call of a shape builds its kernels, hundreds of milliseconds on a CPU (150-730 ms measured) that
would otherwise land on a session's first chunk and make it late.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmUp:
    """What the worker runs before serving: one chunk of silence at each batch size up to `sessions`, on
    `reference` with stream `options`."""

    reference: Any
    options: Any
    sessions: int


def run_warm_up(pipe: Any, warm_up: WarmUp, batches: int, steps: int, samples: int) -> None:
    """`samples` of silence through the model in one stream, then two, ... `batches` (never fatal: a failed
    warm-up only costs the first session's first chunk its speed)."""
    silence = np.zeros(samples, np.float32)
    started = time.monotonic()
    for batch in range(1, batches + 1):
        streams = []
        try:
            for _ in range(batch):
                streams.append(pipe.open_stream(warm_up.reference, warm_up.options))
                streams[-1].push_audio(silence, voiced=False)
            pipe.decode(pipe.sample(streams, steps=steps))
        except Exception:
            logger.exception("engine warm-up at batch size %d failed", batch)
            return
        finally:
            for stream in streams:
                stream.close()
    logger.info("engine warmed up in %.2f s", time.monotonic() - started)
