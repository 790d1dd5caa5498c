"""A session's audio feed: what the stream hears, in real time.

Input audio (microphone or the audio socket) waits in the inbox; every feed tick moves what is due into the
audio history (what was fed, and when: the audio track plays it back, latency is measured from it) and on to the
VAD worker and the engine. With no input it feeds silence, so the model keeps generating idle motion.
"""

from __future__ import annotations

import numpy as np

from avatar_server.audio import AudioHistory, Inbox
from avatar_server.settings import ServerSettings
from avatar_server.vad import VoiceWorker


class AudioFeed:
    """The inbox, the history and the pacing rule between them, for one session."""

    def __init__(self, settings: ServerSettings, voice: VoiceWorker, session_id: str, sample_rate: int) -> None:
        media = settings.media
        self.voice = voice
        self.session_id = session_id
        self.rate = sample_rate
        self.jitter = int(media.input_jitter_ms / 1000 * sample_rate)
        self.lead = int(media.input_lead_ms / 1000 * sample_rate)
        block = int(round(media.feed_interval_ms / 1000 * sample_rate))
        self.history = AudioHistory(sample_rate, media.audio_history_s, block)
        self.inbox = Inbox(int(settings.limits.max_pending_audio_s * sample_rate))
        self.last_input = float("-inf")  # when input audio was last fed (played), not just queued
        self._flush = False

    def put(self, pcm: np.ndarray) -> bool:
        """Queue input audio; False when the pending-audio limit is reached."""
        return self.inbox.put(pcm)

    def flush(self) -> None:
        """End of utterance: feed the tail without waiting for the jitter allowance."""
        self._flush = True

    def tick(self, elapsed: float, now: float) -> None:
        """Feed what is due `elapsed` seconds after the first tick (at clock time `now`): input up to the lead
        allowance when there is some, silence up to the jitter allowance otherwise."""
        due = int(elapsed * self.rate)
        room = due + self.lead - self.history.end
        if room > 0 and self.inbox.size:
            self._push(self.inbox.take(room), now, detect=True)
            self.last_input = now
        floor = due if self._flush and not self.inbox.size else due - self.jitter
        if self.history.end < floor:
            self._push(np.zeros(floor - self.history.end, np.float32), now, detect=False)
            self._flush = False

    def _push(self, pcm: np.ndarray, now: float, detect: bool) -> None:
        self.history.write(pcm, now)
        self.voice.push(self.session_id, pcm, detect)
