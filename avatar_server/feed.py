"""A session's audio feed: what the stream hears, in real time.

Input audio (microphone or the audio socket) waits in the inbox; every feed tick moves what is due into the
audio history (what was fed, and when: the audio track plays it back, latency is measured from it) and on to the
VAD worker and the engine. With no input it feeds silence, so the model keeps generating idle motion.

Pushed audio (an agent's) is fed up to `input_lead_ms` ahead of the wall clock. A microphone's is real time: fed as it
arrives, never ahead (audio fed ahead plays that much later), and when a gap in its arrival made it fall behind (the
silence fed meanwhile pushes everything after it later) its quiet parts are dropped until it is at most
`live_input_max_lag_ms` behind again, so gaps do not add up over a session. How long input waited in the inbox is kept
per feed (the stats event's `input_wait_ms`, with `input_dropped_ms`): the server's latency figure starts at feeding.
"""

from __future__ import annotations

from collections import deque

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
        lag = media.live_input_max_lag_ms
        self.max_lag = None if lag is None else int(lag / 1000 * sample_rate)
        self.quiet_rms = media.live_input_quiet_rms
        block = int(round(media.feed_interval_ms / 1000 * sample_rate))
        self.history = AudioHistory(sample_rate, media.audio_history_s, block)
        self.inbox = Inbox(int(settings.limits.max_pending_audio_s * sample_rate))
        self.last_input = float("-inf")  # when input audio was last fed (played), not just queued
        self.waits: deque[float] = deque(maxlen=media.latency_window)  # seconds input waited before it was fed
        self.dropped = 0  # samples of quiet live input dropped to catch up
        self._flush = False

    def put(self, pcm: np.ndarray, now: float, live: bool = False) -> bool:
        """Queue input audio that arrived at clock time `now` (`live`: from a microphone); False when the
        pending-audio limit is reached."""
        return self.inbox.put(pcm, now, live)

    def flush(self) -> None:
        """End of utterance: feed the tail without waiting for the jitter allowance."""
        self._flush = True

    def tick(self, elapsed: float, now: float) -> None:
        """Feed what is due `elapsed` seconds after the first tick (at clock time `now`): input up to the lead
        allowance (none for live input, after it caught up) when there is some, silence up to the jitter allowance
        otherwise."""
        due = int(elapsed * self.rate)
        lead = self.lead
        if self.max_lag is not None and self.inbox.live:
            behind = self.history.end + self.inbox.size - (due - self.jitter) - self.max_lag
            if behind > 0:
                self.dropped += self.inbox.drop_quiet(behind, self.quiet_rms)
            lead = 0
        room = due + lead - self.history.end
        arrived = self.inbox.oldest
        if room > 0 and arrived is not None:
            self.waits.append(now - arrived)
            self._push(self.inbox.take(room), now, detect=True)
            self.last_input = now
        floor = due if self._flush and not self.inbox.size else due - self.jitter
        if self.history.end < floor:
            self._push(np.zeros(floor - self.history.end, np.float32), now, detect=False)
            self._flush = False

    def _push(self, pcm: np.ndarray, now: float, detect: bool) -> None:
        self.history.write(pcm, now)
        self.voice.push(self.session_id, pcm, detect)
