"""The HTTP edge: uvicorn settings, header timeouts, problem+json for malformed requests, redacted logs.

- `GuardedHttpToolsProtocol` disconnects clients that do not finish their headers within
  `http.header_timeout_s` (also connections that send nothing), and answers requests the parser
  rejects (`Content-Length: -1`, garbage) with a problem+json 400 instead of uvicorn's text/plain.
- `BodyLimit` (ASGI) reads every request body before the app: 413 over the limit (declared or
  chunked), 408 when it does not arrive within `http.body_timeout_s`.
- `RedactSecrets` keeps credentials (`?token=`, bearer values, API keys) out of uvicorn's logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from http import HTTPStatus
from typing import Any, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from avatar_server.problems import problem_response
from avatar_server.settings import ServerSettings

logger = logging.getLogger(__name__)

QUIET_LOGGERS = ("sentence_transformers",)  # at INFO it draws a tqdm bar into the log at each text encode
LOGGERS_TO_REDACT = ("uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "websockets.server")
REDACTED = "[redacted]"
SECRET_QUERY = re.compile(r"(?i)([?&](?:token|access_token|api_key|apikey|key|secret|password)=)[^&\s\"']*")
BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',]+")
SESSION_TOKEN = re.compile(r"olt_[A-Za-z0-9_.\-]+")


#################################################################################
#                                Problem bytes                                  #
#################################################################################


def raw_problem(status: int, detail: str, code: str) -> bytes:
    """A complete HTTP/1.1 problem+json response that closes the connection (for the protocol layer)."""
    phrase = HTTPStatus(status).phrase
    body = json.dumps({"type": f"urn:omnilive:problem:{code}", "title": phrase, "status": status,
                       "detail": detail}).encode()
    head = (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/problem+json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


#################################################################################
#                              Protocol (uvicorn)                               #
#################################################################################


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and problem+json parser errors."""

    header_timeout_s: float = 10.0  # set per server by uvicorn_config (a subclass per settings)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """Malformed request (parser error): problem+json, then close."""
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(raw_problem(400, "malformed HTTP request", "bad_request"))
            self.transport.close()

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        """The request line and headers did not arrive in time: 408 and close."""
        self._header_deadline = None
        if not self.transport.is_closing():
            logger.debug("closing a connection whose headers took over %.1f s", self.header_timeout_s)
            self.transport.write(raw_problem(408, "the request headers did not arrive in time", "request_timeout"))
            self.transport.close()


def protocol_class(settings: ServerSettings) -> type[GuardedHttpToolsProtocol]:
    """The protocol with this server's header timeout."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                {"header_timeout_s": settings.http.header_timeout_s})


#################################################################################
#                               Body limit (ASGI)                               #
#################################################################################


class BodyLimit:
    """ASGI middleware: the whole body is read first; 413 over the limit (uploads to `upload_path` get their
    own), 400 for a malformed Content-Length, 408 when it does not arrive within `timeout_s`."""

    def __init__(self, app: ASGIApp, default: int, uploads: int, upload_path: str, timeout_s: float) -> None:
        self.app, self.default, self.uploads = app, default, uploads
        self.upload_path, self.timeout_s = upload_path, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.uploads if scope["path"].rstrip("/") == self.upload_path else self.default
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.strip().isdigit():
            return await _refuse(scope, receive, send, 400, "Content-Length is not a number", "bad_request")
        if length is not None and int(length) > limit:
            return await _refuse(scope, receive, send, 413, f"request body over {limit} bytes", "body_too_large")
        try:
            body = await asyncio.wait_for(_read_body(receive, limit), self.timeout_s)
        except asyncio.TimeoutError:
            return await _refuse(scope, receive, send, 408, "the request body did not arrive in time",
                                 "request_timeout")
        if body is None:
            return await _refuse(scope, receive, send, 413, f"request body over {limit} bytes", "body_too_large")
        await self.app(scope, _replay(body, receive), send)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The body (b"" when the client disconnected); None once it passes `limit`."""
    chunks, seen = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the buffered body over once, then waits on the connection (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str, code: str) -> None:
    """A problem response that also closes the connection (the unread rest of the body is not wanted)."""
    response = problem_response(status, detail, code, {"Connection": "close"})
    await response(scope, receive, send)


#################################################################################
#                                Log redaction                                  #
#################################################################################


class RedactSecrets(logging.Filter):
    """Replaces credentials in a record's message and arguments with [redacted]."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(sorted((s for s in secrets if s), key=len, reverse=True))

    def redact(self, text: str) -> str:
        text = SECRET_QUERY.sub(lambda m: m.group(1) + REDACTED, text)
        text = BEARER.sub(lambda m: m.group(1) + REDACTED, text)
        text = SESSION_TOKEN.sub("olt_" + REDACTED, text)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self.redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self.redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_redaction(secrets: Iterable[str] = ()) -> None:
    """Attach one RedactSecrets to each logger that writes request lines (replacing an earlier one)."""
    redactor = RedactSecrets(secrets)
    for name in LOGGERS_TO_REDACT:
        target = logging.getLogger(name)
        for old in [f for f in target.filters if isinstance(f, RedactSecrets)]:
            target.removeFilter(old)
        target.addFilter(redactor)


#################################################################################
#                                uvicorn config                                 #
#################################################################################


def uvicorn_config(app: Any, settings: ServerSettings, **overrides: Any) -> Any:
    """uvicorn.Config for `omnilive serve` and the test servers: guarded protocol, timeouts, redacted logs."""
    import uvicorn

    options: dict[str, Any] = dict(
        host=settings.host, port=settings.port, loop="uvloop", http=protocol_class(settings),
        ws="websockets-sansio", lifespan="on", log_level=settings.log_level,
        timeout_keep_alive=settings.http.keep_alive_timeout_s, timeout_graceful_shutdown=10)
    config = uvicorn.Config(app, **{**options, **overrides})  # configures logging: redaction goes on after it
    install_redaction(settings.auth.api_keys)
    quiet_libraries()
    return config


def quiet_libraries() -> None:
    """Libraries that print progress bars when logging is at INFO log at WARNING and above only."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


async def start_uvicorn(config: Any) -> tuple[Any, "asyncio.Task[None]", int]:
    """Serve `config` on the running event loop, without taking its signals: (server, its task, the bound port)
    once it accepts connections (the in-process test server, the cluster's workers)."""
    import uvicorn

    server = uvicorn.Server(config)
    task = asyncio.create_task(server._serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the server stopped during startup")
        await asyncio.sleep(0.01)
    return server, task, server.servers[0].sockets[0].getsockname()[1]
