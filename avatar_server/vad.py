"""Per-session voice activity detection with silero-vad (one stateful model per session)."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable, assert_never

import numpy as np
import torch

from avatar_server.settings import VADSettings
from avatar_server.slot import ClearAudio, PushAudio
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


@dataclass(frozen=True)
class AddVoice:
    """Register a session: load its model now (while ICE connects), not on the first audio."""

    session_id: str
    forward: Callable[[PushAudio | ClearAudio], None]  # to the engine, in order
    on_voice: Callable[[bool], None]                   # speaking changed (called on the worker thread)


@dataclass(frozen=True)
class DetectVoice:
    """Audio for the stream; detect=False: known silence (no model call)."""

    session_id: str
    pcm: np.ndarray
    detect: bool


@dataclass(frozen=True)
class ClearVoice:
    """Barge-in: forget the speech state, pass the clear (and its epoch) on after the audio before it."""

    session_id: str
    epoch: int


@dataclass(frozen=True)
class ReleaseVoice:
    """Free the session's model."""

    session_id: str


VoiceCommand = AddVoice | DetectVoice | ClearVoice | ReleaseVoice


@dataclass
class _Voice:
    activity: VoiceActivity | EnergyActivity
    forward: Callable[[PushAudio | ClearAudio], None]
    on_voice: Callable[[bool], None]


class VoiceWorker:
    """One thread that runs every session's VAD and forwards its audio to the engine, in order.

    Audio and barge-in for a session pass through here, so PushAudio and ClearAudio reach the engine in the order
    the session sent them; generation never waits for VAD.
    """

    def __init__(self, settings: VADSettings) -> None:
        self.settings = settings
        self._queue: queue.SimpleQueue[VoiceCommand | None] = queue.SimpleQueue()
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

    def add(self, session_id: str, forward: Callable[[PushAudio | ClearAudio], None],
            on_voice: Callable[[bool], None]) -> None:
        self._queue.put(AddVoice(session_id, forward, on_voice))

    def push(self, session_id: str, pcm: np.ndarray, detect: bool) -> None:
        """Audio for the stream; detect=False: known silence (no model call)."""
        self._queue.put(DetectVoice(session_id, pcm, detect))

    def clear(self, session_id: str, epoch: int) -> None:
        """Barge-in: forget the speech state and pass the clear of `epoch` on after the audio before it."""
        self._queue.put(ClearVoice(session_id, epoch))

    def release(self, session_id: str) -> None:
        self._queue.put(ReleaseVoice(session_id))

    def run_pending(self) -> None:
        """Handle every queued command on the calling thread: a worker that was not started (tests on virtual
        time drive it so)."""
        while True:
            try:
                command = self._queue.get_nowait()
            except queue.Empty:
                return
            if command is not None:
                self._handle(command)

    def _run(self) -> None:
        torch.set_num_threads(1)  # per thread: silero is many tiny ops, extra threads only contend
        while (command := self._queue.get()) is not None:
            self._handle(command)

    def _handle(self, command: VoiceCommand) -> None:
        try:
            self._apply(command)
        except Exception:  # a failing VAD hurts only its session: its audio counts as unvoiced, its clears go on
            logger.exception("session %s: VAD failed", command.session_id)
            voice = self._voices.get(command.session_id)
            if voice is not None and isinstance(command, DetectVoice):
                voice.forward(PushAudio(command.pcm, False))
            elif voice is not None and isinstance(command, ClearVoice):
                voice.forward(ClearAudio(command.epoch))

    def _apply(self, command: VoiceCommand) -> None:
        if isinstance(command, AddVoice):
            self._voices[command.session_id] = _Voice(make_activity(self.settings), command.forward, command.on_voice)
            return
        voice = self._voices.get(command.session_id)
        if voice is None:
            return
        speaking = voice.activity.speaking
        match command:
            case ReleaseVoice():
                voice.activity.close()
                del self._voices[command.session_id]
                return
            case DetectVoice(pcm=pcm, detect=detect):
                if detect:
                    voiced = voice.activity.process(pcm)
                else:
                    voiced = False
                    if speaking:
                        voice.activity.reset()
                voice.forward(PushAudio(pcm, voiced))
            case ClearVoice(epoch=epoch):
                voiced = False
                voice.activity.reset()
                voice.forward(ClearAudio(epoch))
            case _:
                assert_never(command)
        if voiced != speaking:
            voice.on_voice(voiced)
