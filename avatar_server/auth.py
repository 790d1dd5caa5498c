"""Bearer API keys for servers and short-lived HMAC session tokens for browsers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from avatar_server.problems import Problem
from avatar_server.settings import AuthSettings

TOKEN_PREFIX = "olt_"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


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
        """A token valid for `ttl` seconds."""
        expires = int((now or time.time()) + self.ttl)
        payload = f"{expires}.{secrets.token_hex(8)}"
        return TOKEN_PREFIX + payload + "." + self._sign(payload), self.ttl

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def is_key(self, credential: str) -> bool:
        return any(hmac.compare_digest(credential.encode(), key.encode()) for key in self.keys)

    def is_token(self, credential: str, now: float | None = None) -> bool:
        if not credential.startswith(TOKEN_PREFIX):
            return False
        try:
            expires, nonce, signature = credential[len(TOKEN_PREFIX):].split(".")
            valid_until = int(expires)
        except ValueError:
            return False
        if not hmac.compare_digest(signature, self._sign(f"{expires}.{nonce}")):
            return False
        return (now or time.time()) < valid_until

    def check(self, credential: str | None, *, key_only: bool = False) -> None:
        """Problem 401 unless the credential is an API key (or, unless key_only, a live token)."""
        if self.open:
            return
        if credential and (self.is_key(credential) or (not key_only and self.is_token(credential))):
            return
        what = "an API key" if key_only else "an API key or session token"
        raise Problem(401, f"{what} is required (Authorization: Bearer ...)", code="unauthorized",
                      headers={"WWW-Authenticate": 'Bearer realm="omnilive"'})


def bearer(header: str | None) -> str | None:
    """The credential in an Authorization header, if it is a Bearer one."""
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None
