"""Cross-site write protection (issue 12 item 12): foreign origins and form-like bodies never change state.

A browser sends some cross-site POSTs without a CORS preflight (`text/plain`, form-encoded and
multipart bodies, no custom headers), so CORS alone cannot stop a page elsewhere from writing to an
open server. `WriteGuard` refuses, before the app sees them:

- state-changing requests (POST, PUT, PATCH, DELETE) whose `Origin` is present and neither the
  server's own origin (the `Host` / `X-Forwarded-Host` the request came to) nor in `cors_origins`
  (403 `forbidden_origin`);
- bodies of the wrong media type on the routes that take one (415 `unsupported_media`): JSON for
  `POST /v1/sessions`, `application/sdp` for `POST /v1/whep`, an image, `application/octet-stream`
  or multipart for `POST /v1/avatars` (a missing type is read as raw image bytes: non-browser tools).
"""

from __future__ import annotations

import logging
from typing import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avatar_server.problems import problem_response

logger = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPES = ("application/json",)
SDP_TYPES = ("application/sdp",)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/", "application/octet-stream", "multipart/form-data")


def media_type(headers: dict[bytes, bytes]) -> str:
    """The request's media type, lower case, parameters dropped ('' when absent)."""
    raw = headers.get(b"content-type", b"").decode("latin-1")
    return raw.split(";", 1)[0].strip().lower()


def _json_like(kind: str) -> bool:
    """application/json or a +json structured suffix."""
    return kind in JSON_TYPES or (kind.startswith("application/") and kind.endswith("+json"))


def accepted_type(path: str, kind: str) -> str | None:
    """None when `kind` suits the route at `path`, else what the route takes (for the 415 detail)."""
    if path == "/v1/sessions":
        return None if _json_like(kind) else "application/json"
    if path == "/v1/whep":
        return None if kind in SDP_TYPES else "application/sdp"
    if path == "/v1/avatars":
        ok = kind == "" or any(kind == t or (t.endswith("/") and kind.startswith(t)) for t in IMAGE_TYPES)
        return None if ok else "an image (image/png, image/jpeg, image/webp), application/octet-stream or multipart/form-data"
    return None


def normalise_origin(origin: str) -> str:
    """scheme://host[:port] in lower case with a default port dropped; '' when not an origin."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return ""
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return ""
    default = {"http": 80, "https": 443}[parts.scheme]
    try:
        port = parts.port
    except ValueError:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _host_only(netloc: str) -> str:
    """A Host header value with a default port dropped, lower case."""
    netloc = netloc.strip().lower()
    for suffix in (":80", ":443"):
        if netloc.endswith(suffix):
            return netloc[: -len(suffix)]
    return netloc


class PublicAssets:
    """ASGI wrapper for static files any site may load (the client's ES modules): `Access-Control-Allow-Origin: *`.

    No credentials are involved, so the wildcard is safe; an outer CORS middleware naming an allowed
    origin replaces it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"access-control-allow-origin"]
                headers += [(b"access-control-allow-origin", b"*"), (b"cross-origin-resource-policy", b"cross-origin")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)


class WriteGuard:
    """ASGI middleware: 403 for state-changing requests from foreign origins, 415 for wrong body types."""

    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str]) -> None:
        self.app = app
        origins = tuple(allowed_origins)
        self.any_origin = "*" in origins
        self.allowed = frozenset(normalise_origin(o) for o in origins if o != "*") - {""}

    def origin_allowed(self, origin: str, headers: dict[bytes, bytes]) -> bool:
        """Same host as the request (Host or X-Forwarded-Host), or a configured origin."""
        if self.any_origin:
            return True
        normal = normalise_origin(origin)
        if not normal:
            return False  # "null" (sandboxed frames, file://) and garbage
        if normal in self.allowed:
            return True
        own = _host_only(urlsplit(normal).netloc)
        hosts = (headers.get(b"host", b""), headers.get(b"x-forwarded-host", b""))
        return any(own == _host_only(h.decode("latin-1").split(",")[0]) for h in hosts if h)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        if origin is not None and not self.origin_allowed(origin.decode("latin-1"), headers):
            logger.info("refused a cross-site %s %s from a foreign origin", scope["method"], scope["path"])
            return await self._refuse(scope, receive, send, 403, "requests from this origin may not change state "
                                      "(add it to cors_origins)", "forbidden_origin")
        path = scope["path"].rstrip("/") if scope["method"] == "POST" else ""
        wanted = accepted_type(path, media_type(headers)) if path else None
        if wanted is not None:
            return await self._refuse(scope, receive, send, 415, f"this route takes {wanted}", "unsupported_media")
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str, code: str) -> None:
        """A problem response that closes the connection (the body is not wanted)."""
        await problem_response(status, detail, code, {"Connection": "close"})(scope, receive, send)
