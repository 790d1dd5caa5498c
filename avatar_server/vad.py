"""Per-session voice activity detection with silero-vad (one stateful model per session)."""

from __future__ import annotations

import numpy as np
import torch

from avatar_server.settings import VADSettings

VAD_SAMPLE_RATE = 16000
VAD_WINDOW = 512  # silero-vad takes exactly 512 samples at 16 kHz


def load_vad_model() -> torch.nn.Module:
    """A fresh silero-vad model (shipped in the wheel: no download)."""
    import silero_vad  # noqa: PLC0415  (sets torch threads to 1 on first import; the engine resets them)

    return silero_vad.load_silero_vad()


class VoiceActivity:
    """Speech/silence decision for a stream of 16 kHz float32 audio, with a silence hangover."""

    def __init__(self, settings: VADSettings) -> None:
        self.threshold = settings.threshold
        self.hangover = int(settings.min_silence_ms / 1000 * VAD_SAMPLE_RATE)
        self.model = load_vad_model()
        self.rest = np.zeros(0, np.float32)
        self.speaking = False
        self.silent_samples = 0

    def process(self, pcm: np.ndarray) -> bool:
        """Feed audio; return whether the stream is speaking at its end."""
        audio = np.concatenate([self.rest, pcm.astype(np.float32, copy=False)])
        windows = audio.size // VAD_WINDOW
        with torch.inference_mode():
            for i in range(windows):
                chunk = torch.from_numpy(audio[i * VAD_WINDOW:(i + 1) * VAD_WINDOW].copy())
                probability = float(self.model(chunk, VAD_SAMPLE_RATE))
                self._update(probability)
        self.rest = audio[windows * VAD_WINDOW:]
        return self.speaking

    def _update(self, probability: float) -> None:
        if probability >= self.threshold:
            self.speaking, self.silent_samples = True, 0
        elif self.speaking:
            self.silent_samples += VAD_WINDOW
            if self.silent_samples >= self.hangover:
                self.speaking = False

    def reset(self) -> None:
        """Forget the stream (barge-in)."""
        self.model.reset_states()
        self.rest = np.zeros(0, np.float32)
        self.speaking, self.silent_samples = False, 0

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


class EnergyActivity:
    """VAD disabled: every block with any signal counts as voiced (the model's audio features decide)."""

    def __init__(self, floor: float) -> None:
        self.floor = floor
        self.speaking = False

    def process(self, pcm: np.ndarray) -> bool:
        self.speaking = bool(pcm.size) and float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) > self.floor
        return self.speaking

    def reset(self) -> None:
        self.speaking = False

    def close(self) -> None:
        """Nothing to free."""


def make_activity(settings: VADSettings) -> VoiceActivity | EnergyActivity:
    """silero-vad when enabled, else the energy gate."""
    return VoiceActivity(settings) if settings.enabled else EnergyActivity(settings.energy_floor)
