"""Short seeded fuzz suite (issue 12): mutated SDP offers, images, socket frames, HTTP bodies and headers
against the server on the fake generator. Every case must get a 4xx problem+json (or a success for a
mutation that is still valid), or on a socket an error event / a documented close code; never a 500,
never an ERROR log line. Counts per family are logged. OMNILIVE_FUZZ_SCALE=N multiplies the cases."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import random
import struct
import zlib
from collections import Counter
from typing import Any, Iterator

import httpx
import pytest
from PIL import Image
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from avatar_server.testing import fake_server
from server_helpers import ErrorRecords, error_records, offer_sdp

pytestmark = pytest.mark.usefixtures("loopback_ice")

LOG = logging.getLogger(__name__)
SEED = 1212
SCALE = int(os.environ.get("OMNILIVE_FUZZ_SCALE", "1"))
PROBLEM = "application/problem+json"
WS_DOCUMENTED_CLOSES = {1000, 1008, 4401, 4403, 4404}
SERVER = {"sessions": {"max_sessions": 2, "connect_timeout_s": 60},
          "limits": {"max_ws_messages_per_s": 10000, "ws_burst": 10000}}


class Tally:
    """Answers of one fuzz family: status (or socket outcome) counts, 500s, and what broke a rule."""

    def __init__(self, family: str) -> None:
        self.family, self.cases, self.answers, self.failures = family, 0, Counter(), []

    def http(self, case: str, response: httpx.Response) -> None:
        self.cases += 1
        self.answers[response.status_code] += 1
        if response.status_code >= 500:
            self.failures.append((case, response.status_code, response.text[:200]))
        elif response.status_code >= 400 and not response.headers.get("content-type", "").startswith(PROBLEM):
            self.failures.append((case, response.status_code, "not problem+json"))

    def socket(self, case: str, outcome: str, ok: bool) -> None:
        self.cases += 1
        self.answers[outcome] += 1
        if not ok:
            self.failures.append((case, outcome))

    def report(self) -> None:
        fives = sum(n for k, n in self.answers.items() if isinstance(k, int) and k >= 500)
        LOG.info("fuzz %s: %d cases, answers %s, 500s %d", self.family, self.cases, dict(self.answers), fives)
        assert not self.failures, self.failures[:10]
        assert fives == 0


@pytest.fixture
def error_lines() -> Iterator[ErrorRecords]:
    with error_records() as handler:
        yield handler
    assert not handler.records, handler.messages()[:5]


#################################################################################
#                                 Mutations                                     #
#################################################################################


def flip_bits(rng: random.Random, data: bytes, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def mutate_lines(rng: random.Random, text: str) -> str:
    """One structural change to an SDP-like text: drop, duplicate, swap, garble, inflate or truncate."""
    lines = text.split("\r\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    kind = rng.randrange(8)
    if kind == 0:
        del lines[i]
    elif kind == 1:
        lines.insert(i, lines[j])
    elif kind == 2:
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == 3:
        lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
    elif kind == 4:
        lines[i] = "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(1, 80)))
    elif kind == 5:
        lines[i] = lines[i].replace(" ", " " + str(rng.choice([0, -1, 2**31, 2**64, 10**30])) + " ", 1)
    elif kind == 6:
        lines.insert(i, rng.choice(["a=candidate:1 1 udp 1 1.2.3.4 9 typ host", "m=video 9 RTP/AVP 0",
                                    "a=fingerprint:sha-256 00", "a=setup:bogus", "a=mid:", "a=group:BUNDLE x y",
                                    "a=ice-ufrag:" + "u" * 600, "a=rtpmap:96 VP8/0", "v=1", "c=IN IP9 ::"]))
    else:
        return text[: rng.randrange(len(text))]
    return "\r\n".join(lines)


def encoded(fmt: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (180, 120, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def mutate_image(rng: random.Random, bases: dict[str, bytes]) -> tuple[str, bytes]:
    """A truncated, bit-flipped, chunk-bombed, huge-header or garbage image."""
    fmt = rng.choice(sorted(bases))
    data = bases[fmt]
    kind = rng.randrange(6)
    if kind == 0:
        return f"{fmt} truncated", data[: rng.randrange(len(data))]
    if kind == 1:
        return f"{fmt} bit flips", flip_bits(rng, data, rng.randint(1, 16))
    if kind == 2:
        png = bases["PNG"]
        bomb = zlib.compress(b"\x00" * rng.choice([2, 8, 32]) * 1024 * 1024, 9)
        chunk = rng.choice([b"zTXt", b"iCCP", b"iTXt"])
        return f"PNG {chunk.decode()} bomb", png[:33] + png_chunk(chunk, b"k\x00\x00" + bomb) + png[33:]
    if kind == 3:
        png = bytearray(bases["PNG"])
        side = rng.choice([0, 1, 65535, 100000, 2**31 - 1, 2**32 - 1])
        png[16:24] = struct.pack(">II", side, rng.choice([side, 64]))
        png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
        return f"PNG {side} px header", bytes(png)
    if kind == 4:
        head = data[: rng.randrange(4, 40)]
        return f"{fmt} header + noise", head + rng.randbytes(rng.randrange(0, 4000))
    return "random bytes", rng.randbytes(rng.randrange(0, 3000))


def nested(depth: int, rng: random.Random) -> str:
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
    return opener * depth + "1" + closer * rng.choice([0, depth])


#################################################################################
#                                   Families                                    #
#################################################################################


async def test_fuzz_sdp_offers(error_lines: ErrorRecords) -> None:
    rng, tally = random.Random(SEED), Tally("sdp")
    async with fake_server(**SERVER) as (url, state), httpx.AsyncClient(base_url=url, timeout=20) as http:
        sdp = await offer_sdp()
        for n in range(60 * SCALE):
            mutated = sdp
            for _ in range(rng.randint(1, 4)):
                mutated = mutate_lines(rng, mutated)
            if n % 4 == 3:   # WHEP takes raw bytes: sometimes not even UTF-8
                body = flip_bits(rng, mutated.encode("utf-8", "surrogatepass"), rng.randint(0, 3))
                response = await http.post("/v1/whep", content=body, headers={"content-type": "application/sdp"})
            else:
                response = await http.post("/v1/sessions", json={"sdp": mutated})
            tally.http(f"sdp {n}", response)
            location = response.headers.get("location") if response.status_code == 201 else None
            if location:
                await http.delete(location)
        assert (await http.get("/healthz")).status_code == 200
    tally.report()


async def test_fuzz_images(error_lines: ErrorRecords) -> None:
    rng, tally = random.Random(SEED + 1), Tally("images")
    bases = {fmt: encoded(fmt, (96, 80)) for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP")}
    async with fake_server(**SERVER) as (url, state), httpx.AsyncClient(base_url=url, timeout=30) as http:
        for n in range(60 * SCALE):
            name, data = mutate_image(rng, bases)
            if n % 3 == 2:
                response = await http.post("/v1/avatars", files={"image": ("x.png", data)})
            else:
                response = await http.post("/v1/avatars", content=data,
                                           headers={"content-type": rng.choice(["image/png", "text/plain", ""])})
            tally.http(name, response)
            if response.status_code == 201:
                await http.delete(f"/v1/avatars/{response.json()['id']}")
        assert (await http.get("/healthz")).status_code == 200
    tally.report()


def socket_messages(rng: random.Random, limit: int) -> list[tuple[str, str | bytes]]:
    """(family, message): random bytes, nested JSON, huge frames, random commands, odd-length PCM."""
    commands = ["interrupt", "set_text", "pose", "flush", "clear", "", None, 5]
    out: list[tuple[str, str | bytes]] = []
    for _ in range(40 * SCALE):
        kind = rng.randrange(6)
        if kind == 0:
            out.append(("random bytes", rng.randbytes(rng.randrange(0, 2000))))
        elif kind == 1:
            out.append(("nested json", nested(rng.choice([50, 1000, 100_000]), rng)))
        elif kind == 2:
            out.append(("huge frame", rng.choice([b"\x00", "x"]) * (limit + rng.randrange(1, 50_000))))
        elif kind == 3:
            body: dict[str, Any] = {"type": rng.choice(commands)}
            body[rng.choice(["text", "keypoints", "x"])] = rng.choice(
                ["\ud800", "a" * 5000, [[0.5, 0.5, 1.0]] * rng.choice([1, 106, 5000]), None, 1e308, {"a": []}])
            out.append(("random command", json.dumps(body, ensure_ascii=rng.random() < 0.5)
                        .encode("utf-8", "surrogatepass").decode("utf-8", "replace")))
        elif kind == 4:
            out.append(("odd-length pcm", rng.randbytes(rng.randrange(0, 4000) * 2 + 1)))
        else:
            out.append(("bad utf-8 text", flip_bits(rng, b'{"type": "set_text", "text": "hello"}', 3)
                        .decode("latin-1")))
    return out


def sentinel(n: int) -> tuple[str, str]:
    """A message both sockets answer with a bad_message error naming a position unique to case `n`."""
    return '{"s":' + " " * n + "}", f"position {5 + n}"


async def errors_before_sentinel(ws: Any, message: str | bytes, n: int) -> list[str]:
    """Send one fuzz message, then sentinel n; the error codes the socket sent in between."""
    marker, where = sentinel(n)
    await ws.send(message)
    await ws.send(marker)
    codes: list[str] = []
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if event.get("type") != "error":
            continue
        if event["code"] == "bad_message" and event["detail"].endswith(where):
            return codes
        codes.append(event["code"])


async def fuzz_socket(url: str, tally: Tally, messages: list[tuple[str, str | bytes]]) -> None:
    """Every message on one socket: an error event (or nothing), and the socket stays open."""
    async with ws_connect(url, max_size=None) as ws:
        for n, (family, message) in enumerate(messages):
            try:
                codes = await errors_before_sentinel(ws, message, n)
            except ConnectionClosed as closed:
                tally.socket(family, f"close:{closed.rcvd.code if closed.rcvd else 1006}", False)
                return
            tally.socket(family, "error:" + (",".join(sorted(set(codes))) or "none"), True)


async def closed_with(url: str) -> int:
    """The close code the server ends a socket with."""
    async with ws_connect(url) as ws:
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else 1006


async def test_fuzz_socket_frames(error_lines: ErrorRecords) -> None:
    rng, tally = random.Random(SEED + 2), Tally("sockets")
    async with fake_server(**SERVER) as (url, state), httpx.AsyncClient(base_url=url) as http:
        answer = (await http.post("/v1/sessions", json={"sdp": await offer_sdp()})).json()
        base = url.replace("http", "ws") + f"/v1/sessions/{answer['session_id']}"
        messages = socket_messages(rng, state.settings.limits.max_ws_message_bytes)
        await fuzz_socket(base + "/events", tally, [(f"events {f}", m) for f, m in messages])
        await fuzz_socket(base + "/audio?sample_rate=24000", tally, [(f"audio {f}", m) for f, m in messages])
        for rate in ("0", "-5", "abc", "99999999", "7999", "1e4", "", "%00"):
            code = await closed_with(f"{base}/audio?sample_rate={rate}")
            tally.socket(f"sample_rate={rate!r}", f"close:{code}", code in WS_DOCUMENTED_CLOSES)
        for path in ("/v1/sessions/s_nope/events", "/v1/sessions/%00/audio"):
            code = await closed_with(url.replace("http", "ws") + path)
            tally.socket(path, f"close:{code}", code in WS_DOCUMENTED_CLOSES)
        assert answer["session_id"] in state.manager.sessions
        assert (await http.get("/healthz")).status_code == 200
    tally.report()


PATHS = ["/v1/sessions", "/v1/sessions/s_0000", "/v1/avatars", "/v1/avatars/default", "/v1/tokens", "/v1/whep",
         "/v1/ice-servers", "/healthz", "/readyz", "/metrics", "/v1/sessions/%2e%2e/x", "/v1/avatars/" + "a" * 3000,
         "/v1/sessions?avatar=%00", "/v1/whep?avatar=" + "%ff" * 40]
WRITES = [("POST", "/v1/sessions"), ("POST", "/v1/avatars"), ("POST", "/v1/whep"), ("POST", "/v1/tokens"),
          ("DELETE", "/v1/sessions/s_0000"), ("DELETE", "/v1/avatars/x"), ("GET", "/v1/avatars")]
CONTENT_TYPES = ["application/json", "application/sdp", "multipart/form-data; boundary=x", "multipart/form-data",
                 "text/plain", "image/png", "application/x-www-form-urlencoded", "", "application/json; charset=latin-9"]


def http_body(rng: random.Random, sdp: str) -> bytes:
    """Random bytes, a mutated session request, deep JSON, a multipart skeleton or nothing."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 5000))
    if kind == 1:
        body: dict[str, Any] = {"sdp": sdp, "type": "offer"}
        key = rng.choice(["sdp", "type", "avatar", "text", "fps", "width", "height", "guidance"])
        body[key] = rng.choice([None, -1, 0, 2**63, 1e308, "\ud800", "x" * 3000, [], {"audio": -5}, {"text": "a"}])
        return json.dumps(body).encode("utf-8", "surrogatepass")
    if kind == 2:
        return nested(rng.choice([100, 5000, 60_000]), rng).encode()
    if kind == 3:
        return b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + rng.randbytes(300)
    if kind == 4:
        return flip_bits(rng, json.dumps({"sdp": sdp}).encode(), rng.randint(1, 8))
    return b""


def http_headers(rng: random.Random) -> dict[str, str]:
    headers = {"content-type": rng.choice(CONTENT_TYPES)}
    extra = rng.randrange(5)
    if extra == 0:
        headers["authorization"] = rng.choice(["Bearer", "Bearer olt_1.2.3", "Basic eA==", "Bearer " + "k" * 4000])
    elif extra == 1:
        headers["origin"] = rng.choice(["http://evil.example", "null", "http://allowed.example"])
    elif extra == 2:
        headers["x-" + "h" * rng.randrange(1, 60)] = "v" * rng.randrange(0, 7000)
    elif extra == 3:
        headers["content-encoding"] = rng.choice(["gzip", "br", "x"])
    return headers


RAW_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bin: \x00\x01\xff\r\n\r\n",
    b"GET /\x00\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/avatars HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n",      # body never comes: 408
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n",                                   # headers never end: 408
]


async def raw_exchange(url: str, request: bytes, timeout: float = 10.0) -> tuple[int | None, str]:
    """(status, content-type) of the answer to raw request bytes; (None, '') when the server answers nothing."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None, ""
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    kind = next((line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("content-type:")), "")
    return int(lines[0].split()[1]), kind


async def test_fuzz_http_bodies_and_headers(error_lines: ErrorRecords) -> None:
    rng, tally = random.Random(SEED + 3), Tally("http")
    server = {**SERVER, "http": {"header_timeout_s": 1.0, "body_timeout_s": 1.0}}
    async with fake_server(**server) as (url, state), httpx.AsyncClient(base_url=url, timeout=20) as http:
        sdp = await offer_sdp()
        for _ in range(80 * SCALE):
            if rng.random() < 0.75:   # mostly the routes that read bodies
                method, path = rng.choice(WRITES)
            else:
                method, path = rng.choice(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]), rng.choice(PATHS)
            response = await http.request(method, path, content=http_body(rng, sdp), headers=http_headers(rng))
            tally.http(f"{method} {path[:40]}", response)
            if response.status_code == 201 and response.headers.get("location"):
                await http.delete(response.headers["location"])
        for n, request in enumerate(RAW_REQUESTS):
            status, kind = await raw_exchange(url, request)
            ok = status is not None and status < 500 and (status < 400 or kind.startswith(PROBLEM))
            tally.socket(f"raw {n}: {request[:40]!r}", f"raw:{status}", ok)
        assert (await http.get("/healthz")).status_code == 200
    tally.report()
