"""Hostile and broken clients (issue 12, items 1-8 and 10): 4xx problem bodies, no stalls, no held slots."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import re
import struct
import threading
import time
import zlib
from typing import Any, AsyncIterator, Iterator

import httpx
import psutil
import pytest
from PIL import Image
from websockets.asyncio.client import connect as ws_connect

from avatar_server.avatars import decode_image
from avatar_server.http import RedactSecrets
from avatar_server.problems import Problem
from avatar_server.settings import LimitSettings
from avatar_server.testing import fake_server
from model.data.keypoints import NUM_KEYPOINTS
from server_helpers import ErrorRecords, error_records, offer_sdp, with_candidates

pytestmark = pytest.mark.usefixtures("loopback_ice")

PROBLEM = "application/problem+json"
SEED = 12
STALL_S = 0.5  # a loop stall the SDP checks must prevent (an unchecked 3,000-candidate offer took 1.2 s)
INTERNAL_TEXT = ("NoneType", "StopIteration", "Traceback", "object has no attribute", "AssertionError")


def assert_problem(response: httpx.Response, *statuses: int) -> dict:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert not any(text in body["detail"] for text in INTERNAL_TEXT), body["detail"]
    return body


def without(sdp: str, pattern: str) -> str:
    return "\r\n".join(line for line in sdp.split("\r\n") if not re.match(pattern, line))


class LoopWatch:
    """Measures the longest gap between ticks of a task on the running loop (a stalled loop shows up here)."""

    def __init__(self, tick_s: float = 0.005) -> None:
        self.tick_s, self.longest, self._task = tick_s, 0.0, None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            self.longest = max(self.longest, now - last - self.tick_s)
            last = now

    async def __aenter__(self) -> "LoopWatch":
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
def error_log() -> Iterator[ErrorRecords]:
    with error_records() as handler:
        yield handler


#################################################################################
#                     1 + 4: SDP offers (size caps, missing fields)             #
#################################################################################


async def test_offer_with_thousands_of_candidates_is_refused_without_stalling_the_loop() -> None:
    async with fake_server(sessions={"max_sessions": 1}) as (url, state), httpx.AsyncClient(base_url=url) as http:
        sdp = await offer_sdp()
        huge = with_candidates(sdp, 1500)  # 3,000 candidates, ~180 KB: under the body limit
        assert len(huge) < state.settings.limits.max_body_bytes
        async with LoopWatch() as watch:
            started = time.monotonic()
            body = assert_problem(await http.post("/v1/sessions", json={"sdp": huge}), 400)
            elapsed = time.monotonic() - started
        assert re.search(r"\b30\d\d ICE candidates; the limit is 100\b", body["detail"]), body["detail"]
        # regression bounds (before the checks: 1.2 s for this offer; since: 4-18 ms), loose enough for a shared CI machine
        assert elapsed < STALL_S and watch.longest < STALL_S, (elapsed, watch.longest)
        many_media = sdp + "".join(f"m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:x{i}\r\n" for i in range(10))
        assert "media sections" in assert_problem(await http.post("/v1/sessions", json={"sdp": many_media}),
                                                  400)["detail"]
        many_lines = sdp.replace("a=rtcp-mux\r\n", "a=rtcp-mux\r\n" + "a=x-filler\r\n" * 2500, 1)
        assert "lines" in assert_problem(await http.post("/v1/sessions", json={"sdp": many_lines}), 400)["detail"]
        at_cap = with_candidates(sdp, state.settings.limits.max_sdp_candidates // 2 - 2)
        async with LoopWatch() as watch:
            created = await http.post("/v1/sessions", json={"sdp": at_cap})
        assert created.status_code == 201, created.text
        assert watch.longest < STALL_S, watch.longest
        assert (await http.delete(f"/v1/sessions/{created.json()['session_id']}")).status_code == 204


MUTATIONS = {
    "no a=mid": lambda s: without(s, "a=mid"),
    "no a=mid on audio": lambda s: without(s, "a=mid:1"),
    "no m=audio line": lambda s: without(s, "m=audio"),
    "no m=video line": lambda s: without(s, "m=video"),
    "audio section dropped": lambda s: s.split("m=audio")[0],
    "no a=fingerprint": lambda s: without(s, "a=fingerprint"),
    "malformed fingerprint": lambda s: re.sub(r"a=fingerprint:(\S+) ", r"a=fingerprint:\1 ZZ", s),
    "no a=setup": lambda s: without(s, "a=setup"),
    "no a=ice-ufrag": lambda s: without(s, "a=ice-ufrag"),
    "no a=rtpmap": lambda s: without(s, "a=rtpmap"),
    "no a=rtcp-mux": lambda s: without(s, "a=rtcp-mux"),
    "repeated mid": lambda s: s.replace("a=mid:1", "a=mid:0"),
    "lone surrogate": lambda s: s.replace("s=-", "s=\ud800"),
    "garbage": lambda s: "v=0\r\nm=video x\r\n",
}


async def test_offers_missing_what_a_session_needs_get_400_and_hold_no_slot(error_log: ErrorRecords) -> None:
    async with fake_server(sessions={"max_sessions": 1}) as (url, state), httpx.AsyncClient(base_url=url) as http:
        sdp = await offer_sdp()
        for name, mutate in MUTATIONS.items():
            body = json.dumps({"sdp": mutate(sdp)}).encode()  # ensure_ascii: a lone surrogate travels escaped
            response = await http.post("/v1/sessions", content=body, headers={"content-type": "application/json"})
            assert_problem(response, 400, 422)  # 422: pydantic refuses the lone surrogate itself
            assert len(state.manager) == 0 and state.engine.slot_count == 0, name
            whep = await http.post("/v1/whep", content=mutate(sdp).encode("utf-8", "surrogatepass"),
                                   headers={"content-type": "application/sdp"})
            assert_problem(whep, 400)
        await asyncio.sleep(0.3)  # a background aiortc failure would show up by now
        created = await http.post("/v1/sessions", json={"sdp": sdp})  # the only slot is free
        assert created.status_code == 201, created.text
    assert not error_log.records, error_log.messages()


#################################################################################
#                          2 + 3: images and the avatar store                   #
#################################################################################


def encoded(fmt: str, size: tuple[int, int] = (96, 96)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, fmt)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def broken_images() -> dict[str, bytes]:
    """Truncations, a corrupted header, metadata bombs and seeded bit flips of PNG/JPEG/WebP."""
    png, jpeg, webp = encoded("PNG"), encoded("JPEG"), encoded("WEBP")
    cases = {f"png[:{n}]": png[:n] for n in range(1, 60)}
    cases |= {f"jpeg[:{n}]": jpeg[:n] for n in (2, 4, 6, 10, 20, 200)}
    cases |= {f"webp[:{n}]": webp[:n] for n in (12, 16, 20, 30)}
    cases["corrupt IHDR"] = png[:16] + b"\xff\xff" + png[18:]
    bomb = zlib.compress(b"a" * 5_000_000)
    cases["zTXt bomb"] = png[:33] + png_chunk(b"zTXt", b"k\x00\x00" + bomb) + png[33:]
    cases["iCCP bomb"] = png[:33] + png_chunk(b"iCCP", b"icc\x00\x00" + bomb) + png[33:]
    rng = random.Random(SEED)
    for index in range(60):
        source = bytearray(rng.choice((png, jpeg, webp)))
        for _ in range(rng.randint(1, 8)):
            source[rng.randrange(len(source))] ^= 1 << rng.randrange(8)
        cases[f"bit flips {index}"] = bytes(source)
    return cases


def test_broken_images_are_415_or_422_never_an_exception() -> None:
    limits = LimitSettings(max_image_pixels=1_000_000, min_image_side=64)
    answers: dict[int, int] = {}
    for name, data in broken_images().items():
        try:
            decode_image(data, limits)
            answers[201] = answers.get(201, 0) + 1  # a harmless flip (e.g. in a pixel) still decodes
        except Problem as problem:
            assert problem.status in (413, 415, 422), (name, problem.status)
            assert not any(text in problem.detail for text in INTERNAL_TEXT), (name, problem.detail)
            answers[problem.status] = answers.get(problem.status, 0) + 1
    assert answers.get(422, 0) > 60, answers


async def test_broken_uploads_get_problem_bodies_and_keep_the_connection(error_log: ErrorRecords) -> None:
    async with fake_server() as (url, state), httpx.AsyncClient(base_url=url) as http:
        cases = broken_images()
        for name in ("png[:16]", "png[:20]", "webp[:16]", "jpeg[:6]", "corrupt IHDR", "zTXt bomb", "iCCP bomb"):
            assert_problem(await http.post("/v1/avatars", content=cases[name]), 415, 422)
        connections = set()
        for data in list(cases.values())[::4]:
            response = await http.post("/v1/avatars", content=data)
            assert response.status_code in (201, 413, 415, 422), response.text
            connections.add(response.extensions["network_stream"].get_extra_info("client_addr"))
        assert len(connections) == 1  # one keep-alive connection served them all
    assert not error_log.records, error_log.messages()


def big_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 80, 60)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


FALL_BACK_S = 10.0                # resident memory is back near idle within this after the uploads
FALL_BACK_BYTES = 100 * 2**20    # "near idle": the 12 stored references and allocator slack


async def test_concurrent_large_uploads_stay_within_memory_and_are_reduced() -> None:
    limits = {"max_upload_bytes": 10_000_000, "max_image_pixels": 16_000_000}
    data = big_png(4000)  # ~56 KB on the wire, 16 Mpixels decoded: the largest image the limits accept
    process = psutil.Process()
    peak, stop = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.01)

    async with fake_server(limits=limits) as (url, state), httpx.AsyncClient(base_url=url, timeout=60) as http:
        idle = process.memory_info().rss
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            responses = await asyncio.gather(*(http.post("/v1/avatars", content=data) for _ in range(12)))
        finally:
            stop.set()
            sampler.join()
        assert [r.status_code for r in responses] == [201] * 12
        assert all(r.json()["width"] == 4000 for r in responses)  # the original size is reported
        done = time.monotonic()
        after = process.memory_info().rss
        while after - idle >= FALL_BACK_BYTES and time.monotonic() - done < FALL_BACK_S:
            await asyncio.sleep(0.1)
            after = process.memory_info().rss
        fell_back_s = time.monotonic() - done
    logging.getLogger(__name__).warning("12 uploads of 16 Mpixels: peak +%d MB over idle, +%d MB after %.1f s",
                                        (peak - idle) >> 20, (after - idle) >> 20, fell_back_s)
    assert peak - idle < 300 * 2**20, f"peak +{(peak - idle) >> 20} MB"
    assert after - idle < FALL_BACK_BYTES, f"+{(after - idle) >> 20} MB resident {FALL_BACK_S:.0f} s after the uploads"


async def test_avatar_limit_holds_under_concurrent_uploads() -> None:
    async with fake_server(limits={"max_avatars": 5}) as (url, state), httpx.AsyncClient(base_url=url, timeout=60) as http:
        data = encoded("PNG", (128, 128))
        responses = await asyncio.gather(*(http.post("/v1/avatars", content=data) for _ in range(40)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [201] * 5 + [409] * 35
        assert len(state.avatars) == 1 + 5  # the built-in default + the limit
        failed = await http.post("/v1/avatars", content=b"not an image")
        assert_problem(failed, 409)  # still full: a failed upload never frees a place it did not hold
        avatar = next(r.json()["id"] for r in responses if r.status_code == 201)
        assert (await http.delete(f"/v1/avatars/{avatar}")).status_code == 204
        assert_problem(await http.post("/v1/avatars", content=b"not an image"), 415)  # a reservation is
        assert (await http.post("/v1/avatars", content=data)).status_code == 201       # released on failure


#################################################################################
#                  5 + 6: text, pose and nested JSON on the sockets             #
#################################################################################


async def next_error(ws: Any) -> dict:
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if event["type"] == "error":
            return event


async def test_unencodable_text_and_wrong_poses_are_bad_messages(error_log: ErrorRecords) -> None:
    async with fake_server() as (url, state), httpx.AsyncClient(base_url=url) as http:
        sdp = await offer_sdp()
        body = json.dumps({"sdp": sdp, "text": "\ud800"}).encode()
        refused = await http.post("/v1/sessions", content=body, headers={"content-type": "application/json"})
        assert "surrogate" in assert_problem(refused, 422)["detail"]
        assert len(state.manager) == 0
        answer = (await http.post("/v1/sessions", json={"sdp": sdp})).json()
        base = url.replace("http", "ws") + f"/v1/sessions/{answer['session_id']}"
        async with ws_connect(base + "/events") as events:
            assert json.loads(await events.recv())["type"] == "state"
            bad = [{"type": "set_text", "text": "calm \ud800"},
                   {"type": "pose", "keypoints": [[0.5, 0.5, 1.0]] * 5000},
                   {"type": "pose", "keypoints": [[0.5, 0.5, 1.0]] * (NUM_KEYPOINTS - 1)},
                   {"type": "pose", "keypoints": [[0.5, 0.5]] * NUM_KEYPOINTS}]
            for command in bad:
                await events.send(json.dumps(command))
                event = await next_error(events)
                assert event["code"] == "bad_message", event
            await events.send(json.dumps({"type": "pose", "keypoints": [[0.5, 0.5, 1.0]] * NUM_KEYPOINTS}))
            await events.send(json.dumps({"type": "set_text", "text": "calm"}))
            await events.send(json.dumps({"type": "dance"}))  # the next error is this one: the valid ones passed
            assert (await next_error(events))["code"] == "unknown_command"
        await asyncio.sleep(0.2)
        assert (await http.get(f"/v1/sessions/{answer['session_id']}")).status_code == 200
    assert not error_log.records, error_log.messages()


async def test_deeply_nested_json_is_a_bad_message_on_both_sockets(error_log: ErrorRecords) -> None:
    nested = "[" * 100_000
    async with fake_server() as (url, state), httpx.AsyncClient(base_url=url) as http:
        answer = (await http.post("/v1/sessions", json={"sdp": await offer_sdp()})).json()
        base = url.replace("http", "ws") + f"/v1/sessions/{answer['session_id']}"
        async with ws_connect(base + "/events") as events:
            assert json.loads(await events.recv())["type"] == "state"
            await events.send(nested)
            event = await next_error(events)
            assert event["code"] == "bad_message" and "nested" in event["detail"]
            await events.send(json.dumps({"type": "dance"}))  # the socket lives on
            assert (await next_error(events))["code"] == "unknown_command"
        async with ws_connect(base + "/audio") as audio:
            await audio.send(nested)
            event = json.loads(await asyncio.wait_for(audio.recv(), 5))
            assert event["code"] == "bad_message" and "nested" in event["detail"]
            await audio.send("{}")
            assert json.loads(await asyncio.wait_for(audio.recv(), 5))["code"] == "unknown_command"
    assert not error_log.records, error_log.messages()


#################################################################################
#                      7 + 8: bodies, lengths and slow clients                  #
#################################################################################


async def raw_request(url: str, data: bytes, wait_s: float = 5.0) -> bytes:
    """Send raw bytes on a fresh connection; everything the server answers until it closes (or wait_s)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    chunks = []
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), wait_s):
            chunks.append(chunk)
    except asyncio.TimeoutError:
        chunks.append(b"<still open>")
    finally:
        writer.close()
    return b"".join(chunks)


def status_and_type(raw: bytes) -> tuple[int, str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    content_type = re.search(r"content-type: ([^\r\n]+)", head)
    return int(head.split()[1]), content_type.group(1) if content_type else ""


async def test_body_lengths_chunked_limits_and_incomplete_bodies() -> None:
    timeouts = {"body_timeout_s": 0.5, "header_timeout_s": 0.5}
    async with fake_server(http=timeouts) as (url, state), httpx.AsyncClient(base_url=url) as http:
        limits = state.settings.limits
        for path in ("/v1/sessions", "/v1/whep", "/v1/avatars"):
            size = limits.max_upload_bytes if path == "/v1/avatars" else limits.max_body_bytes
            body = _aiter(b" " * 65536 for _ in range(size // 65536 + 2))  # no length: sent chunked
            response = await http.post(path, content=body, headers={"content-type": "application/sdp"})
            assert response.request.headers.get("transfer-encoding") == "chunked"
            assert_problem(response, 413)
        post = "POST /v1/sessions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        started = time.monotonic()
        raw = await raw_request(url, (post + "content-length: 10\r\n\r\n").encode())
        assert status_and_type(raw) == (408, PROBLEM) and time.monotonic() - started < 3
        for length in ("-1", "abc", "1e3"):
            raw = await raw_request(url, (post + f"content-length: {length}\r\n\r\n").encode())
            assert status_and_type(raw) == (400, PROBLEM), raw
        raw = await raw_request(url, b"GARBAGE\r\n\r\n")
        assert status_and_type(raw) == (400, PROBLEM), raw


async def _aiter(items: Any) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def test_stalled_connections_are_closed_by_the_server() -> None:
    timeouts = {"body_timeout_s": 0.6, "header_timeout_s": 0.6}
    process = psutil.Process()
    async with fake_server(http=timeouts) as (url, state):
        baseline = process.num_fds()
        host, port = url.removeprefix("http://").split(":")
        partials = [b"", b"GET /healthz HTTP/1.1\r\nhost: x\r\n",
                    b"POST /v1/sessions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"sdp\":"]
        streams = [await asyncio.open_connection(host, int(port)) for _ in range(60)]
        for index, (_, writer) in enumerate(streams):
            writer.write(partials[index % len(partials)])
        assert process.num_fds() >= baseline + 2 * len(streams)  # both ends of each connection live here
        started = time.monotonic()
        closed = await asyncio.gather(*(asyncio.wait_for(reader.read(), 5) for reader, _ in streams))
        assert time.monotonic() - started < 3
        assert all(answer == b"" or answer.startswith(b"HTTP/1.1 408") for answer in closed)
        for _, writer in streams:
            writer.close()
        await asyncio.sleep(0.2)
        assert process.num_fds() <= baseline + 2
        assert (await httpx.AsyncClient(base_url=url).get("/healthz")).status_code == 200


#################################################################################
#                         10: credentials never reach a log                     #
#################################################################################


def test_redaction_filter_hides_tokens_keys_and_bearer_values() -> None:
    redactor = RedactSecrets(["k-secret-key"])
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("1.2.3.4:5", "GET", "/v1/sessions/s_1/events?token=olt_123.abc.sig&x=1", "1.1", 101),
                               None)
    redactor.filter(record)
    message = record.getMessage()
    assert "olt_123" not in message and "token=[redacted]&x=1" in message
    for text in ("Authorization: Bearer k-secret-key", "?api_key=k-secret-key", "key k-secret-key used"):
        assert "k-secret-key" not in redactor.redact(text)


async def test_socket_and_http_urls_with_tokens_are_logged_redacted() -> None:
    captured: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(self.format(record))

    handler = Capture(logging.DEBUG)
    async with fake_server(log_level="info", auth={"api_keys": ["k-secret-key"]}) as (url, state):
        targets = [logging.getLogger(n) for n in ("uvicorn.access", "uvicorn.error")]
        for target in targets:
            target.addHandler(handler)
        try:
            async with httpx.AsyncClient(base_url=url) as http:
                key = {"Authorization": "Bearer k-secret-key"}
                token = (await http.post("/v1/tokens", headers=key)).json()["token"]
                answer = (await http.post("/v1/sessions", json={"sdp": await offer_sdp()}, headers=key)).json()
                await http.get(f"/v1/avatars?token={token}")
                ws_base = url.replace("http", "ws") + f"/v1/sessions/{answer['session_id']}/events"
                for credential in (answer["token"], "k-secret-key"):  # a socket takes the key or its session's token
                    async with ws_connect(f"{ws_base}?token={credential}") as events:
                        await events.recv()
        finally:
            for target in targets:
                target.removeHandler(handler)
    text = "\n".join(captured)
    assert "WebSocket" in text and "token=[redacted]" in text, text
    assert token not in text and "k-secret-key" not in text and token.split(".")[-1] not in text
    assert answer["token"] not in text and answer["token"].split(".")[-1] not in text
