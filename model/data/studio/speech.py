"""Speech for studio clips: random sentences spoken by espeak-ng or flite, with pauses, 16 kHz mono."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.data.format import read_audio

# ------------------------------------------------------------------------------------------------
# Sentences
# ------------------------------------------------------------------------------------------------

_SUBJECTS = ("the team", "my neighbour", "our teacher", "this little robot", "the weather", "everyone here",
             "a friend of mine", "the new software", "the river", "your brother", "the morning train",
             "nobody", "the chef", "a quiet student", "the city council", "my grandmother")
_VERBS = ("really likes", "never forgets", "quickly builds", "carefully reads", "always finds",
          "wants to visit", "is thinking about", "just painted", "could explain", "will measure",
          "loves cooking", "slowly opened", "tried to fix", "often talks about", "remembered")
_OBJECTS = ("a yellow bicycle", "the old library", "seven purple balloons", "the final answer",
            "a cup of hot chocolate", "the mountain path", "fresh strawberries", "the broken window",
            "an interesting question", "the quarterly report", "a jazz concert", "the garden fence",
            "three sleepy cats", "the big match", "a long letter", "the weekend plans")
_ENDINGS = ("today", "every single morning", "before lunch", "in the summer", "without any help",
            "right now", "at the weekend", "for a very long time", "again and again", "last night",
            "", "", "")
_OPENERS = ("well,", "so,", "honestly,", "you know,", "look,", "okay,", "actually,", "", "", "", "")
_QUESTIONS = ("did you see {o} {e}?", "why does {s} need {o}?", "can we talk about {o}?",
              "what do you think about {o}?", "have you ever seen {o}?")
_INTERJECTIONS = ("hmm", "yes", "okay", "right", "oh", "well", "sure", "mm hmm", "no")


def random_sentence(rng: np.random.Generator) -> str:
    """One short English sentence or question."""
    s, v, o, e = (str(rng.choice(words)) for words in (_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS))
    if rng.random() < 0.25:
        text = str(rng.choice(_QUESTIONS)).format(s=s, o=o, e=e)
    else:
        text = f"{rng.choice(_OPENERS)} {s} {v} {o} {e}".strip() + str(rng.choice([".", ".", "!"]))
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------------
# Voices
# ------------------------------------------------------------------------------------------------

_ESPEAK_LANGUAGES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp")
_ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
                    "Annie", "belinda", "david", "linda", "max", "michael", "steph", "robert", "Alicia")
_FLITE_VOICES = {"kal": 110.0, "kal16": 110.0, "awb": 115.0, "rms": 105.0, "slt": 170.0}


@dataclass(frozen=True)
class Voice:
    """One TTS voice and its prosody settings for a whole clip."""

    engine: str                      # "espeak-ng" or "flite"
    name: str
    rate: float                      # espeak: words per minute; flite: duration stretch
    pitch: float                     # espeak: 0..99; flite: mean f0 in Hz
    word_gap: int = 0                # espeak: extra pause between words, 10 ms units

    def command(self, text: str, wav_path: str) -> list[str]:
        """The subprocess command that speaks `text` into `wav_path`."""
        if self.engine == "espeak-ng":
            return ["espeak-ng", "-v", self.name, "-s", str(int(self.rate)), "-p", str(int(self.pitch)),
                    "-g", str(self.word_gap), "-w", wav_path, text]
        return ["flite", "-voice", self.name, "--setf", f"duration_stretch={self.rate:.3f}",
                "--setf", f"int_f0_target_mean={self.pitch:.1f}", "-o", wav_path, "-t", text]

    def describe(self) -> dict:
        """JSON-able description for meta.json."""
        return {"engine": self.engine, "name": self.name, "rate": round(self.rate, 3),
                "pitch": round(self.pitch, 2), "word_gap": self.word_gap}


def sample_voice(rng: np.random.Generator, flite_probability: float) -> Voice:
    """A random voice with random rate and pitch."""
    if rng.random() < flite_probability:
        name = str(rng.choice(sorted(_FLITE_VOICES)))
        return Voice("flite", name, rate=float(rng.uniform(0.8, 1.3)),
                     pitch=_FLITE_VOICES[name] * float(rng.uniform(0.85, 1.25)))
    name = f"{rng.choice(_ESPEAK_LANGUAGES)}+{rng.choice(_ESPEAK_VARIANTS)}"
    return Voice("espeak-ng", name, rate=float(rng.integers(125, 200)), pitch=float(rng.integers(25, 80)),
                 word_gap=int(rng.integers(0, 4)))


def resample(pcm: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling by FFT (deterministic, no extra dependency)."""
    if source_rate == target_rate or len(pcm) == 0:
        return pcm.astype(np.float32)
    n_out = int(round(len(pcm) * target_rate / source_rate))
    spectrum = np.fft.rfft(pcm.astype(np.float64))
    bins = n_out // 2 + 1
    out = np.zeros(bins, dtype=np.complex128)
    keep = min(bins, len(spectrum))
    out[:keep] = spectrum[:keep]
    return (np.fft.irfft(out, n=n_out) * (n_out / len(pcm))).astype(np.float32)


def speak(voice: Voice, text: str, sample_rate: int) -> np.ndarray:
    """Run the TTS engine and return float32 mono audio at `sample_rate`."""
    fd, path = tempfile.mkstemp(suffix=".wav", prefix="omnilive-tts-")
    os.close(fd)
    try:
        subprocess.run(voice.command(text, path), check=True, capture_output=True, timeout=60)
        pcm, rate = read_audio(Path(path))
    finally:
        os.unlink(path)
    return resample(pcm, rate, sample_rate)


# ------------------------------------------------------------------------------------------------
# A clip's soundtrack
# ------------------------------------------------------------------------------------------------


@dataclass
class Speech:
    """The audio of one clip and what was said when."""

    audio: np.ndarray                                    # float32 [N] at sample_rate, N % samples_per_frame == 0
    voice: Voice
    segments: list[dict] = field(default_factory=list)   # {"start_s", "end_s", "text"}
    mostly_silent: bool = False


def _trim_silence(pcm: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    loud = np.flatnonzero(np.abs(pcm) > threshold)
    return pcm[loud[0]:loud[-1] + 1] if len(loud) else pcm[:0]


def make_speech(rng: np.random.Generator, sample_rate: int, samples_per_frame: int, min_seconds: float,
                max_seconds: float, mostly_silent_probability: float, flite_probability: float) -> Speech:
    """Sentences with pauses (or a mostly silent clip) filling a random duration."""
    voice = sample_voice(rng, flite_probability)
    target = float(rng.uniform(min_seconds, max_seconds))
    mostly_silent = bool(rng.random() < mostly_silent_probability)
    pieces: list[np.ndarray] = []
    segments: list[dict] = []
    cursor = 0

    def silence(seconds: float) -> None:
        nonlocal cursor
        pieces.append(np.zeros(int(seconds * sample_rate), dtype=np.float32))
        cursor += len(pieces[-1])

    if mostly_silent:
        silence(rng.uniform(0.3, max(0.4, target - 1.0)))
        if rng.random() < 0.8:
            texts = [str(rng.choice(_INTERJECTIONS))]
        else:
            texts = []
    else:
        silence(rng.uniform(0.1, 0.6))
        texts = [random_sentence(rng) for _ in range(4)]
    for text in texts:
        if cursor >= target * sample_rate:
            break
        pcm = _trim_silence(speak(voice, text, sample_rate))
        segments.append({"start_s": round(cursor / sample_rate, 3),
                         "end_s": round((cursor + len(pcm)) / sample_rate, 3), "text": text})
        pieces.append(pcm)
        cursor += len(pcm)
        silence(rng.uniform(0.25, 1.2))
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    n_target = int(np.clip(max(cursor, target * sample_rate) if mostly_silent else cursor,
                           min_seconds * sample_rate, max_seconds * sample_rate))
    n_target = max(samples_per_frame, n_target // samples_per_frame * samples_per_frame)
    audio = np.pad(audio, (0, max(0, n_target - len(audio))))[:n_target]
    fade = min(len(audio), int(0.03 * sample_rate))
    audio[len(audio) - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    peak = float(np.abs(audio).max())
    if peak > 0:
        audio *= float(10 ** (rng.uniform(-8.0, -1.0) / 20)) / peak
    audio += rng.normal(0.0, 10 ** (rng.uniform(-75, -60) / 20), len(audio)).astype(np.float32)
    for segment in segments:
        segment["end_s"] = min(segment["end_s"], round(len(audio) / sample_rate, 3))
    segments = [s for s in segments if s["start_s"] < len(audio) / sample_rate]
    return Speech(audio=audio.astype(np.float32), voice=voice, segments=segments, mostly_silent=mostly_silent)
