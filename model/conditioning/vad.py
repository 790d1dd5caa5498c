"""Speech gating with silero-vad: the one decision live sessions, render and training share."""

from __future__ import annotations

import numpy as np
import torch

VAD_SAMPLE_RATE = 16000
VAD_WINDOW = 512             # silero-vad takes exactly 512 samples at 16 kHz
DEFAULT_THRESHOLD = 0.5      # speech probability that starts speech
DEFAULT_HANGOVER_MS = 200.0  # silence that must pass before speech ends


def load_vad_model() -> torch.nn.Module:
    """A fresh, stateful silero-vad model (shipped in the wheel: no download); one per stream."""
    import silero_vad

    threads = torch.get_num_threads()
    model = silero_vad.load_silero_vad()
    torch.set_num_threads(threads)
    return model


class SpeechGate:
    """Speech/silence of a 16 kHz float32 stream fed in any block size, with a silence hangover."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, hangover_ms: float = DEFAULT_HANGOVER_MS) -> None:
        self.threshold = threshold
        self.hangover = int(hangover_ms / 1000 * VAD_SAMPLE_RATE)
        self.model = load_vad_model()
        self.rest = np.zeros(0, np.float32)
        self.speaking = False
        self.silent_samples = 0

    def windows(self, pcm: np.ndarray) -> np.ndarray:
        """Feed audio; the speaking flag after each complete 512-sample window, [N] bool."""
        audio = np.concatenate([self.rest, np.asarray(pcm, dtype=np.float32).reshape(-1)])
        count = audio.size // VAD_WINDOW
        flags = np.zeros(count, dtype=bool)
        # no TorchScript profiling re-optimisation: it costs seconds on the first calls of every stream
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            for i in range(count):
                window = torch.from_numpy(audio[i * VAD_WINDOW:(i + 1) * VAD_WINDOW].copy())
                self._update(float(self.model(window, VAD_SAMPLE_RATE)))
                flags[i] = self.speaking
        self.rest = audio[count * VAD_WINDOW:]
        return flags

    def process(self, pcm: np.ndarray) -> bool:
        """Feed audio; whether the stream is speaking at its end."""
        self.windows(pcm)
        return self.speaking

    def _update(self, probability: float) -> None:
        if probability >= self.threshold:
            self.speaking, self.silent_samples = True, 0
        elif self.speaking:
            self.silent_samples += VAD_WINDOW
            self.speaking = self.silent_samples < self.hangover

    def reset(self) -> None:
        """Forget the stream (barge-in)."""
        self.model.reset_states()
        self.rest = np.zeros(0, np.float32)
        self.speaking, self.silent_samples = False, 0


def voiced_frames(pcm: np.ndarray, num_frames: int, samples_per_frame: int, threshold: float = DEFAULT_THRESHOLD,
                  hangover_ms: float = DEFAULT_HANGOVER_MS) -> torch.Tensor:
    """Per-video-frame speech flags [T] of a whole clip, decided as a live session decides them."""
    flags = SpeechGate(threshold, hangover_ms).windows(pcm)
    voiced = torch.zeros(num_frames, dtype=torch.bool)
    for i, flag in enumerate(flags):
        first, last = i * VAD_WINDOW // samples_per_frame, ((i + 1) * VAD_WINDOW - 1) // samples_per_frame
        voiced[first:min(last + 1, num_frames)] |= bool(flag)
    return voiced
