"""Forwarding from the front to a worker: HTTP requests (httpx) and the session sockets (websockets).

Only signalling passes through here (SDP, JSON, socket messages); media flows between the client and the
worker's node. Origin and hop-by-hop headers stay at the front, whose own middlewares (body limit, write
guard, CORS) already ran; the worker still checks credentials, so its answers are a single server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import httpx
from fastapi import Request, Response, WebSocket
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from avatar_server.events import error_event
from avatar_server.routes.sockets import WS_NOT_FOUND

logger = logging.getLogger(__name__)

REQUEST_DROP = frozenset({b"connection", b"keep-alive", b"proxy-authorization", b"te", b"trailers",
                          b"transfer-encoding", b"upgrade", b"host", b"content-length", b"origin"})
RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"upgrade"})
SOCKET_HEADERS = frozenset({"authorization", "user-agent"})
WORKER_LOST = "worker_lost"
WORKER_LOST_DETAIL = "the worker serving this session stopped; start a new session"
OPEN_TIMEOUT_S = 10.0
CLIENT, WORKER = "client", "worker"  # which side of a relay ended it


async def forward(http: httpx.AsyncClient, base_url: str, request: Request, body: bytes) -> httpx.Response:
    """Send the request to `base_url` (same method, path, query, body and credentials); httpx.TransportError
    when the worker cannot be reached."""
    headers = [(key, value) for key, value in request.headers.raw if key.lower() not in REQUEST_DROP]
    if request.client is not None:
        headers.append((b"x-forwarded-for", request.client.host.encode()))
    query = request.url.query
    url = base_url + request.url.path + (f"?{query}" if query else "")
    return await http.request(request.method, url, content=body, headers=headers)


def relayed(upstream: httpx.Response) -> Response:
    """The worker's answer as the front's (status, body and headers, several Link headers included)."""
    response = Response(upstream.content, status_code=upstream.status_code)
    response.raw_headers += [(key, value) for key, value in upstream.headers.raw if key.lower() not in RESPONSE_DROP]
    return response


class SocketRelay:
    """One session socket, client <-> worker, message for message; the worker's close code reaches the client.

    When the worker is lost (its connection drops without a close frame, or the pool finds it dead) the client
    gets an error event `worker_lost` and the close code 4404 (session gone: the JavaScript client then starts
    a new session, which lands on a healthy worker)."""

    def __init__(self, client: WebSocket) -> None:
        self.client = client
        self.lost = asyncio.Event()

    def worker_lost(self) -> None:
        self.lost.set()

    async def run(self, url: str) -> bool:
        """Relay until either side closes; False when the worker was lost (or unreachable)."""
        headers = [(k, v) for k, v in self.client.headers.items() if k in SOCKET_HEADERS]
        try:
            upstream = await ws_connect(url, additional_headers=headers, open_timeout=OPEN_TIMEOUT_S, max_size=None,
                                        compression=None)
        except (OSError, InvalidHandshake, asyncio.TimeoutError) as error:
            logger.info("socket relay: worker unreachable at open: %r", error)
            await self.client.accept()
            await self._close_lost()
            return False
        await self.client.accept()
        async with upstream:
            pumps = {asyncio.create_task(self._to_client(upstream)), asyncio.create_task(self._to_worker(upstream))}
            lost = asyncio.create_task(self.lost.wait())
            done, pending = await asyncio.wait({*pumps, lost}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            ended = {task.result() for task in done & pumps}
            if CLIENT in ended:   # the client left: closing `upstream` tells the worker
                return True
            closed = upstream.protocol.close_rcvd
            if not self.lost.is_set() and closed is not None:   # the worker closed it (session ended, refusal)
                await self._close(closed.code, closed.reason)
                return True
        await self._close_lost()
        return False

    async def _to_client(self, upstream: ClientConnection) -> str:
        """Worker -> client until one side ends; which one did."""
        try:
            async for message in upstream:
                if isinstance(message, bytes):
                    await self.client.send_bytes(message)
                else:
                    await self.client.send_text(message)
        except ConnectionClosed:
            return WORKER
        except (RuntimeError, WebSocketDisconnect):
            return CLIENT
        return WORKER

    async def _to_worker(self, upstream: ClientConnection) -> str:
        """Client -> worker until one side ends; which one did."""
        while True:
            try:
                message = await self.client.receive()
            except (RuntimeError, WebSocketDisconnect):
                return CLIENT
            if message["type"] == "websocket.disconnect":
                return CLIENT
            try:
                await upstream.send(message["bytes"] if message.get("bytes") is not None else message.get("text") or "")
            except ConnectionClosed:
                return WORKER

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await self.client.close(code=code, reason=reason)

    async def _close_lost(self) -> None:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await self.client.send_text(json.dumps(error_event(WORKER_LOST, WORKER_LOST_DETAIL)))
        await self._close(WS_NOT_FOUND, "worker lost")
