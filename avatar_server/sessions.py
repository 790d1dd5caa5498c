"""SessionManager: admission, creating sessions from SDP offers, and ending them all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any, Iterator

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError

from avatar_server.aiortc_adapter import tap_encoded, use_live_audio_buffer
from avatar_server.avatars import Avatar
from avatar_server.clock import SYSTEM_CLOCK, Clock
from avatar_server.engine import Engine
from avatar_server.metrics import Metrics
from avatar_server.problems import Problem, internal_problem
from avatar_server.ratelimit import RateLimiter
from avatar_server.runtime import PipelineHandle
from avatar_server.sdp import parse_offer
from avatar_server.session import Session, SessionAvatar, SessionOptions, SessionServices
from avatar_server.settings import ServerSettings
from avatar_server.vad import VoiceWorker
from model.errors import InputError

logger = logging.getLogger(__name__)

CLIENT_SDP_ERRORS = (ValueError, InvalidAccessError, InvalidStateError, OperationError)  # aiortc's own messages


class SessionManager:
    """Owns every live session; refuses new ones beyond `sessions.max_sessions`. Sessions run on `clock` (the
    engine's too)."""

    def __init__(self, settings: ServerSettings, engine: Engine, voice: VoiceWorker, handle: PipelineHandle,
                 metrics: Metrics, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        self.engine = engine
        self.voice = voice
        self.handle = handle
        self.metrics = metrics
        self.sessions: dict[str, Session] = {}
        metrics.watch(self.sessions)
        self.draining = False
        self._pending = 0
        self._creations = RateLimiter(settings.sessions.max_creations_per_s, settings.sessions.creation_burst)
        self._services = SessionServices(settings, engine, voice, clock, int(handle.pipe.config.sample_rate),
                                         self._closed, metrics.latency.observe, metrics.chunk_stages)

    def __len__(self) -> int:
        return len(self.sessions)

    @property
    def max_sessions(self) -> int:
        return self.settings.sessions.max_sessions

    @property
    def full(self) -> bool:
        return len(self.sessions) + self._pending >= self.max_sessions

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise Problem(404, f"unknown session {session_id!r}", code="unknown_session")
        return session

    def ice_servers(self) -> list[dict[str, Any]]:
        """The configured STUN/TURN servers as the client sees them."""
        return [server.model_dump(exclude_none=True) for server in self.settings.ice_servers]

    def _admit(self) -> None:
        if self.draining:
            raise Problem(503, "the server is shutting down", code="draining",
                          headers={"Retry-After": str(self.settings.sessions.retry_after_s)})
        if self.full:
            self.metrics.sessions_rejected.labels(reason="capacity").inc()
            raise Problem(503, f"all {self.max_sessions} session slots are in use; retry later", code="capacity",
                          headers={"Retry-After": str(self.settings.sessions.retry_after_s)})

    def _throttle(self) -> None:
        """`sessions.max_creations_per_s`: WebRTC setup runs on the event loop every live session shares."""
        if not self._creations.allow():
            self.metrics.sessions_rejected.labels(reason="rate").inc()
            rate = self.settings.sessions.max_creations_per_s
            retry = max(1, math.ceil(self._creations.wait_s()))
            raise Problem(429, f"sessions are being created faster than {rate:g} per second; retry later",
                          code="rate_limited", headers={"Retry-After": str(retry)})

    async def create(self, offer_sdp: str, options: SessionOptions, avatar: Avatar) -> tuple[Session, str]:
        """Answer an SDP offer with a new session: the one place where sessions are created (SDP and WHEP).

        Problem 503 when full, 400 for an unusable offer, 429 over the creation rate (checked after the cheap
        checks, so only offers that would reach aiortc count), 500 with a request id for an internal error."""
        self._admit()
        parse_offer(offer_sdp, self.settings.limits)
        self._throttle()
        self._pending += 1
        try:
            return await self._create(offer_sdp, options, avatar)
        finally:
            self._pending -= 1

    async def _create(self, offer_sdp: str, options: SessionOptions, avatar: Avatar) -> tuple[Session, str]:
        config = RTCConfiguration(iceServers=[  # always explicit: aiortc falls back to a public STUN server
            RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
            for s in self.settings.ice_servers])
        pc = RTCPeerConnection(config)
        session: Session | None = None
        try:
            stream_options = self.handle.make_options(
                text=options.text, seed=0, steps=self.settings.model.steps, guidance=options.guidance)
            session = Session(self._services, pc, options, SessionAvatar(avatar.reference, avatar.idle, stream_options))
            self._wire(pc, session)
            await self._negotiate(pc, session, offer_sdp, self.settings.media.mic_reorder_packets)
            self.sessions[session.id] = session
            session.start()
        except (Problem, InputError):  # the client's offer or options
            await self._abandon(pc, session)
            raise
        except Exception as error:  # noqa: BLE001 - our bug, not the client's: logged, 500 with a request id
            problem = internal_problem("creating a session", error)
            await self._abandon(pc, session)
            raise problem from None
        logger.info("session %s: avatar %s, %dx%d @ %d fps", session.id, avatar.id, options.width, options.height,
                    options.fps)
        return session, pc.localDescription.sdp

    @staticmethod
    def _wire(pc: RTCPeerConnection, session: Session) -> None:
        """The peer connection's events drive the session."""
        @pc.on("connectionstatechange")
        def _state() -> None:
            session.on_connection_state(pc.connectionState)

        pc.on("track", session.on_remote_track)

    @staticmethod
    async def _negotiate(pc: RTCPeerConnection, session: Session, offer_sdp: str, mic_reorder: int | None) -> None:
        """Apply the offer, give the microphone's receiver its live jitter buffer (`mic_reorder`: None keeps
        aiortc's), attach the avatar's tracks, create the answer; Problem 400 when aiortc cannot negotiate the
        offer."""
        with _offer_errors():
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        kinds = {t.kind for t in pc.getTransceivers()}
        if mic_reorder is not None:
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "audio":
                    session.mic_buffer = use_live_audio_buffer(transceiver.receiver, mic_reorder)
        if "video" not in kinds:
            raise Problem(400, "unusable SDP offer: the offer has no video m-line to send the avatar on",
                          code="bad_sdp")
        tap_encoded(pc.addTrack(session.video), session.on_video_encoded)
        if "audio" in kinds:
            pc.addTrack(session.audio)
        with _offer_errors():
            await pc.setLocalDescription(await pc.createAnswer())

    async def _abandon(self, pc: RTCPeerConnection, session: Session | None) -> None:
        """Free a session that did not start: a started one gets its full teardown; otherwise the half-built
        peer connection is closed, and closing it may fail too (aiortc), which must not turn into a 500."""
        if session is not None and session.id in self.sessions:
            await session.close("internal_error")
            return
        if session is not None:
            session.closed = True
            for task in list(session.tasks):
                task.cancel()
        try:
            await pc.close()
        except Exception as error:  # noqa: BLE001 - best effort on a connection that never worked
            logger.debug("closing a rejected peer connection failed: %r", error)

    def _closed(self, session: Session, reason: str) -> None:
        if self.sessions.pop(session.id, None) is not None:
            self.metrics.session_ended(session, reason)

    async def close_all(self, reason: str) -> None:
        """Stop admitting and end every session (shutdown)."""
        self.draining = True
        await asyncio.gather(*(s.close(reason) for s in list(self.sessions.values())), return_exceptions=True)


@contextlib.contextmanager
def _offer_errors() -> Iterator[None]:
    """aiortc working on the client's offer: what it raises (many types for offers the checks let through) is a
    400 `bad_sdp`. OSError is the server's (sockets, file descriptors) and stays an internal error."""
    try:
        yield
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 - aiortc raises anything for an offer it cannot negotiate
        raise Problem(400, _sdp_detail(error), code="bad_sdp") from None


def _sdp_detail(error: Exception) -> str:
    """A client-facing message: aiortc's validation messages, never internal exception text."""
    if isinstance(error, CLIENT_SDP_ERRORS) and str(error):
        return f"unusable SDP offer: {error}"
    logger.warning("SDP offer rejected by aiortc: %s", type(error).__name__)
    return "unusable SDP offer: aiortc cannot negotiate it"
