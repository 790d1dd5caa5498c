"""Per-session voice activity detection with silero-vad (one stateful model per session)."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from avatar_server.settings import VADSettings
from model.conditioning.vad import SpeechGate

logger = logging.getLogger(__name__)


class VoiceActivity(SpeechGate):
    """silero-vad speech gate of one session, set from the server's VAD settings."""

    def __init__(self, settings: VADSettings) -> None:
        super().__init__(settings.threshold, settings.min_silence_ms)

    def close(self) -> None:
        """Drop the session's VAD model."""
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


#################################################################################
#                                  VAD worker                                   #
#################################################################################


@dataclass
class _Voice:
    activity: VoiceActivity | EnergyActivity
    forward: Callable[[tuple], None]      # to the engine, in order
    on_voice: Callable[[bool], None]      # speaking changed (called on this thread)


class VoiceWorker:
    """One thread that runs every session's VAD and forwards its audio to the engine, in order.

    Audio and barge-in for a session pass through here, so ("push", pcm, voiced) and ("clear",)
    reach the engine in the order the session sent them; generation never waits for VAD.
    """

    def __init__(self, settings: VADSettings) -> None:
        self.settings = settings
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._voices: dict[str, _Voice] = {}
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> int:
        """Sessions registered (their VAD models are freed on release)."""
        return len(self._voices)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="omnilive-vad", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(10.0)
            self._thread = None
        self._voices.clear()

    def add(self, session_id: str, forward: Callable[[tuple], None], on_voice: Callable[[bool], None]) -> None:
        self._queue.put((session_id, ("add", forward, on_voice)))

    def push(self, session_id: str, pcm: np.ndarray, detect: bool) -> None:
        """Audio for the stream; detect=False: known silence (no model call)."""
        self._queue.put((session_id, ("push", pcm, detect)))

    def clear(self, session_id: str) -> None:
        """Barge-in: forget the speech state and pass the clear on after the audio before it."""
        self._queue.put((session_id, ("clear",)))

    def release(self, session_id: str) -> None:
        self._queue.put((session_id, ("release",)))

    def _run(self) -> None:
        torch.set_num_threads(1)  # per thread: silero is many tiny ops, extra threads only contend
        while (item := self._queue.get()) is not None:
            session_id, command = item
            try:
                self._apply(session_id, command)
            except Exception:  # a failing VAD hurts only its session: its audio counts as unvoiced
                logger.exception("session %s: VAD failed", session_id)
                voice = self._voices.get(session_id)
                if voice is not None and command[0] == "push":
                    voice.forward(("push", command[1], False))

    def _apply(self, session_id: str, command: tuple) -> None:
        kind = command[0]
        if kind == "add":  # load the model now (while ICE connects), not on the first audio
            self._voices[session_id] = _Voice(make_activity(self.settings), command[1], command[2])
            return
        voice = self._voices.get(session_id)
        if voice is None:
            return
        if kind == "release":
            voice.activity.close()
            del self._voices[session_id]
            return
        speaking = voice.activity.speaking
        if kind == "push":
            _, pcm, detect = command
            if detect:
                voiced = voice.activity.process(pcm)
            else:
                voiced = False
                if speaking:
                    voice.activity.reset()
            voice.forward(("push", pcm, voiced))
        elif kind == "clear":
            voiced = False
            voice.activity.reset()
            voice.forward(("clear",))
        else:
            raise ValueError(f"unknown VAD command {kind!r}")
        if voiced != speaking:
            voice.on_voice(voiced)
