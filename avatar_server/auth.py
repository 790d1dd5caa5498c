"""Bearer API keys, short-lived HMAC client tokens for browsers, and session tokens scoped to one session.

- An **API key** (`auth.api_keys`) can do everything: mint tokens, create and end any session, manage avatars.
- A **client token** (`POST /v1/tokens`, `auth.token_ttl_s`) can do what a browser needs to start sessions
  (ICE servers, create a session, list/upload/delete avatars), but cannot mint tokens, read, end or join
  existing sessions.
- A **session token** (in each session answer) works only for its own session: `GET`/`DELETE
  /v1/sessions/{id}` and that session's sockets. It dies when the session ends and expires at the latest
  after `auth.session_token_ttl_s` (default: the session's `max_duration_s`); it cannot create anything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from avatar_server.problems import Problem
from avatar_server.settings import AuthSettings

TOKEN_PREFIX = "olt_"
CLIENT_SCOPE = "c"
SESSION_SCOPE_PREFIX = "s_"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class Grant:
    """What a checked credential may do: kind 'open' (no keys configured), 'key', 'client' or 'session'."""

    kind: str
    session_id: str | None = None
    expires: float | None = None  # wall-clock time the credential stops working (None: never)


OPEN = Grant("open")
KEY = Grant("key")


def unauthorized(detail: str) -> Problem:
    """401 with the Bearer challenge."""
    return Problem(401, detail, code="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="omnilive"'})


def forbidden(detail: str) -> Problem:
    """403: a valid credential used outside its scope."""
    return Problem(403, detail, code="forbidden")


class Authenticator:
    """Checks `Authorization: Bearer <api key | token>` (or `?token=` on WebSockets)."""

    def __init__(self, settings: AuthSettings) -> None:
        self.keys = tuple(settings.api_keys)
        self.ttl = settings.token_ttl_s
        secret = settings.token_secret or secrets.token_hex(32)
        self._secret = secret.encode()

    @property
    def open(self) -> bool:
        """No keys configured: every request is allowed (the local default)."""
        return not self.keys

    def issue(self, now: float | None = None) -> tuple[str, int]:
        """A client token valid for `ttl` seconds."""
        return self._token(CLIENT_SCOPE, int((now or time.time()) + self.ttl)), self.ttl

    def issue_session(self, session_id: str, expires: float) -> str:
        """A token for one session only, valid until `expires` (wall clock) or the session's end."""
        if not session_id.startswith(SESSION_SCOPE_PREFIX) or "." in session_id:
            raise ValueError(f"not a session id: {session_id!r}")
        return self._token(session_id, int(expires))

    def _token(self, scope: str, expires: int) -> str:
        payload = f"{expires}.{scope}.{secrets.token_hex(8)}"
        return TOKEN_PREFIX + payload + "." + self._sign(payload)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def is_key(self, credential: str) -> bool:
        return any(hmac.compare_digest(credential.encode(), key.encode()) for key in self.keys)

    def token_grant(self, credential: str, now: float | None = None) -> Grant | None:
        """The grant of a well-signed, unexpired token; None otherwise."""
        if not credential.startswith(TOKEN_PREFIX):
            return None
        try:
            expires, scope, nonce, signature = credential[len(TOKEN_PREFIX):].split(".")
            valid_until = int(expires)
        except ValueError:
            return None
        if not hmac.compare_digest(signature, self._sign(f"{expires}.{scope}.{nonce}")):
            return None
        if (now or time.time()) >= valid_until:
            return None
        if scope == CLIENT_SCOPE:
            return Grant("client", expires=float(valid_until))
        if scope.startswith(SESSION_SCOPE_PREFIX):
            return Grant("session", session_id=scope, expires=float(valid_until))
        return None

    def is_token(self, credential: str, now: float | None = None) -> bool:
        """A live token of any scope."""
        return self.token_grant(credential, now) is not None

    def grant(self, credential: str | None) -> Grant:
        """The credential's grant; 401 when it is missing, wrong or expired (never on an open server)."""
        if self.open:
            return OPEN
        if credential and self.is_key(credential):
            return KEY
        grant = self.token_grant(credential) if credential else None
        if grant is None:
            raise unauthorized("an API key or a live token is required (Authorization: Bearer ...)")
        return grant

    def check(self, credential: str | None, *, key_only: bool = False) -> Grant:
        """A grant for the routes that are not about one session: API key, or (unless key_only) a client token."""
        grant = self.grant(credential)
        if key_only and grant.kind == "client":
            raise unauthorized("an API key is required (Authorization: Bearer ...)")
        if grant.kind == "session":
            raise forbidden("a session token only works for its own session (GET/DELETE /v1/sessions/{id} "
                            "and its sockets)")
        return grant

    def check_session(self, credential: str | None, session_id: str, live: bool) -> Grant:
        """A grant for one session's routes: API key, or that session's token while the session lives."""
        grant = self.grant(credential)
        if grant.kind in ("open", "key"):
            return grant
        if grant.kind == "client":
            raise forbidden("a client token cannot read, end or join a session; use the session's own token")
        if grant.session_id != session_id:
            raise forbidden("a session token only works for its own session")
        if not live:
            raise unauthorized("this session token's session has ended")
        return grant
