"""What every route shares: one ServerState per app, stored as `app.state.server`."""

from __future__ import annotations

from dataclasses import dataclass

from avatar_server.auth import Authenticator
from avatar_server.avatars import AvatarStore
from avatar_server.engine import Engine
from avatar_server.metrics import Metrics
from avatar_server.runtime import PipelineHandle
from avatar_server.sessions import SessionManager
from avatar_server.settings import ServerSettings
from avatar_server.vad import VoiceWorker


@dataclass
class ServerState:
    """The settings, the loaded model and the services built around it (see avatar_server.app.create_app)."""

    settings: ServerSettings
    handle: PipelineHandle
    engine: Engine
    voice: VoiceWorker
    avatars: AvatarStore
    manager: SessionManager
    metrics: Metrics
    auth: Authenticator
    ready: bool = False  # set once start-up is done, cleared when shutdown begins

    def live(self, session_id: str) -> bool:
        """The session exists and has not ended."""
        session = self.manager.sessions.get(session_id)
        return session is not None and not session.closed
