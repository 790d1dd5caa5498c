"""Per-clip condition features for the cache, computed by the same functions inference uses."""

from __future__ import annotations

import numpy as np
import torch

from model.conditioning.audio import clip_audio_windows
from model.conditioning.heatmaps import render_heatmaps
from model.config import ModelConfig

VAD_SAMPLE_RATE = 16000
VAD_WINDOW = 512          # silero-vad takes exactly 512 samples at 16 kHz
VAD_THRESHOLD = 0.5       # the server's default (configs/server, vad.threshold)
VAD_HANGOVER_MS = 200.0   # the server's default (vad.min_silence_ms)


def clip_audio_features(pcm: np.ndarray, num_frames: int, config: ModelConfig) -> torch.Tensor:
    """A clip's 16 kHz PCM -> audio windows [T, W, K, A] of every video frame (past + look-ahead)."""
    return clip_audio_windows(torch.from_numpy(np.asarray(pcm, dtype=np.float32)), config, num_frames)


def voiced_frames(pcm: np.ndarray, num_frames: int, samples_per_frame: int, threshold: float = VAD_THRESHOLD,
                  hangover_ms: float = VAD_HANGOVER_MS) -> torch.Tensor:
    """Per-video-frame speech flags [T] from silero-vad, with the server's threshold and silence hangover
    (so training can gate audio windows the way a live session does)."""
    import silero_vad  # noqa: PLC0415  (its import sets torch threads to 1: restore them)

    threads = torch.get_num_threads()
    model = silero_vad.load_silero_vad()
    torch.set_num_threads(threads)
    audio = np.asarray(pcm, dtype=np.float32)
    hangover = int(hangover_ms / 1000 * VAD_SAMPLE_RATE)
    speaking, silent, flags = False, 0, np.zeros(len(audio) // VAD_WINDOW, dtype=bool)
    with torch.inference_mode():
        for i in range(len(flags)):
            probability = float(model(torch.from_numpy(audio[i * VAD_WINDOW:(i + 1) * VAD_WINDOW].copy()), VAD_SAMPLE_RATE))
            if probability >= threshold:
                speaking, silent = True, 0
            elif speaking:
                silent += VAD_WINDOW
                speaking = silent < hangover
            flags[i] = speaking
    voiced = torch.zeros(num_frames, dtype=torch.bool)
    for i, flag in enumerate(flags):
        first, last = i * VAD_WINDOW // samples_per_frame, ((i + 1) * VAD_WINDOW - 1) // samples_per_frame
        voiced[first:min(last + 1, num_frames)] |= bool(flag)
    return voiced


def clip_heatmaps(xy: np.ndarray, visibility: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Keypoints [T, K, 2] in [0, 1] + visibility [T, K] -> heatmaps [T, G, height, width] at latent size."""
    return torch.as_tensor(render_heatmaps(xy, visibility, height, width)).float()
