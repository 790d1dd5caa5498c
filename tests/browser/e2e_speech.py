"""Test speech: real human recordings (alsa-utils) and espeak-ng, laid out with silences, as WAV or PCM16."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

#################################################################################
#                                    Sources                                    #
#################################################################################

ALSA_SOUNDS = Path("/usr/share/sounds/alsa")
HUMAN_RECORDINGS = ("Front_Center.wav", "Front_Left.wav", "Rear_Right.wav", "Side_Left.wav")
ESPEAK_TEXT = (
    "Hello, I am your avatar. I can talk, nod and wave while you speak to me. "
    "Ask me anything and I will answer right away."
)
SAMPLE_RATE = 48000


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 in [-1, 1] and its sample rate (16-bit PCM WAV)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * wav.getsampwidth()}-bit")
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        channels, rate = wav.getnchannels(), wav.getframerate()
    return data.reshape(-1, channels).mean(axis=1), rate  # [N, C] -> [N]


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Linear-interpolation resampling (plenty for VAD and a fake microphone)."""
    if rate == target:
        return audio
    n_out = int(round(len(audio) * target / rate))
    return np.interp(np.arange(n_out) * rate / target, np.arange(len(audio)), audio).astype(np.float32)


def human_speech(rate: int = SAMPLE_RATE) -> np.ndarray:
    """Real human speech: alsa-utils' channel announcements ("Front Center", ...) back to back."""
    missing = [name for name in HUMAN_RECORDINGS if not (ALSA_SOUNDS / name).is_file()]
    if missing:
        raise FileNotFoundError(f"alsa-utils recordings missing in {ALSA_SOUNDS}: {missing} (apt-get install alsa-utils)")
    parts = []
    for name in HUMAN_RECORDINGS:
        audio, source_rate = read_wav(ALSA_SOUNDS / name)
        parts.append(resample(audio, source_rate, rate))
    return np.concatenate(parts)


def espeak_speech(text: str = ESPEAK_TEXT, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Synthetic speech from espeak-ng."""
    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(out), text], check=True, capture_output=True)
        audio, source_rate = read_wav(out)
    return resample(audio, source_rate, rate)


#################################################################################
#                                    Layouts                                    #
#################################################################################


def with_silences(speech: np.ndarray, rate: int, lead_s: float, tail_s: float) -> np.ndarray:
    """Silence, the speech (peak-normalised to -3 dBFS), silence."""
    peak = float(np.max(np.abs(speech))) or 1.0
    speech = speech * (0.7 / peak)
    lead = np.zeros(int(lead_s * rate), dtype=np.float32)
    tail = np.zeros(int(tail_s * rate), dtype=np.float32)
    return np.concatenate([lead, speech.astype(np.float32), tail])


def to_pcm16(audio: np.ndarray) -> bytes:
    """float32 [-1, 1] -> PCM16 little-endian bytes."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def write_wav(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """Mono 16-bit PCM WAV (the format Chromium's fake audio capture reads)."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(to_pcm16(audio))
    return path
