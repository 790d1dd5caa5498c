"""Stall tests (issue 12, must show): a live session keeps its frame rate while another client sends the
worst offers and the largest uploads the server accepts, in a loop, for 30 s, or creates and deletes sessions
back to back; and the session-creation rate limit that bounds such churn answers 429 with Retry-After."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest
from PIL import Image

from avatar_server.peer import AvatarPeer
from avatar_server.ratelimit import RateLimiter
from avatar_server.settings import DEFAULT_CONFIG, load_settings
from avatar_server.testing import fake_server
from server_helpers import offer_sdp, with_candidates

pytestmark = pytest.mark.usefixtures("loopback_ice")

logger = logging.getLogger(__name__)

ATTACK_S = 30.0
MIN_FPS = 24.0
# A regression bound, not the idle-machine figure: before the SDP checks one 3,000-candidate offer stalled the
# loop 1.2-2.1 s; measured since, 51-83 ms on an idle machine and up to 450 ms once on a shared one (CI
# machines are shared, and timing asserts must not flake there).
MAX_GAP_S = 1.0
# The shipped limits for uploads (the defaults), not the small ones of test.yaml.
LIMITS = {"max_upload_bytes": 10_485_760, "max_image_pixels": 16_000_000}
# The shipped session-creation rate (test.yaml lifts it for tests that create sessions back to back).
SHIPPED = load_settings(DEFAULT_CONFIG, environ={}).sessions
CREATION_RATE = {"max_creations_per_s": SHIPPED.max_creations_per_s, "creation_burst": SHIPPED.creation_burst}


def largest_image() -> bytes:
    """4000 x 4000 (16 Mpixels, the pixel limit) with texture, so decoding does real work."""
    rng = np.random.default_rng(12)
    small = rng.integers(0, 255, (250, 250, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((4000, 4000), Image.NEAREST).save(buffer, "PNG")
    return buffer.getvalue()


def attack(url: str, requests: list[tuple[str, str, bytes, str]], stop: threading.Event, tally: Counter) -> None:
    """POST each request in turn until `stop` (deleting what was created); counts answers by status."""
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.is_set():
            for name, path, body, content_type in requests:
                response = http.post(path, content=body, headers={"content-type": content_type})
                tally[f"{name} {response.status_code}"] += 1
                if response.status_code == 201:
                    http.delete(response.headers["location"])
                if stop.is_set():
                    return


def gaps_and_fps(arrivals: list[float], start: float, end: float) -> tuple[float, float]:
    """(frames per second, longest gap) of the frames that arrived in [start, end]."""
    times = np.array([t for t in arrivals if start <= t <= end])
    edges = np.concatenate([[start], times, [end]])
    return (len(times) / (end - start), float(np.max(np.diff(edges))))


def json_offer(sdp: str) -> bytes:
    return json.dumps({"sdp": sdp}).encode()


async def measure_under_attack(url: str, attacks: list[list[tuple[str, str, bytes, str]]],
                               seconds: float) -> tuple[float, float, Counter]:
    """(fps, longest gap, answers) of a live loopback session while each attack loops in its own thread."""
    peer = AvatarPeer(url, keep_images=False)
    async with httpx.AsyncClient() as http:
        assert (await peer.connect(http)).status_code == 201
    await peer.wait_connected()
    await asyncio.sleep(1.5)                                                  # past the first frames
    stop, tally = threading.Event(), Counter()
    threads = [threading.Thread(target=attack, args=(url, requests, stop, tally)) for requests in attacks]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    await asyncio.sleep(seconds)
    end = time.monotonic()
    stop.set()
    await asyncio.to_thread(lambda: [t.join() for t in threads])
    frames = [t for t, _, _ in peer.received.video]
    await peer.close()
    fps, longest = gaps_and_fps(frames, start, end)
    logger.warning("%.1f fps received, longest gap %.0f ms over %.0f s; attack answers %s",
                   fps, longest * 1000, end - start, dict(sorted(tally.items())))
    return fps, longest, tally


@pytest.mark.slow
async def test_live_session_keeps_its_frame_rate_under_worst_offers_and_uploads() -> None:
    """Over-cap offers (3,000 candidates; 2,500 lines) and 16-Mpixel uploads, back to back for 30 s."""
    async with fake_server(limits=LIMITS) as (url, state):
        limits = state.settings.limits
        sdp = await offer_sdp()
        candidates = with_candidates(sdp, 1500)                               # 3,000 candidates, ~180 KB
        lines = sdp.replace("a=rtcp-mux\r\n", "a=rtcp-mux\r\n" + "a=x-filler\r\n" * 2500, 1)
        assert len(candidates) < limits.max_body_bytes
        offers = [("over-cap candidates", "/v1/sessions", json_offer(candidates), "application/json"),
                  ("over-cap lines", "/v1/sessions", json_offer(lines), "application/json"),
                  ("over-cap whep", "/v1/whep", candidates.encode(), "application/sdp")]
        image = largest_image()
        assert len(image) <= limits.max_upload_bytes
        uploads = [("largest upload", "/v1/avatars", image, "image/png")]
        fps, longest, tally = await measure_under_attack(url, [offers, uploads], ATTACK_S)
    assert tally["over-cap candidates 400"] > 10 and tally["largest upload 201"] > 5, tally
    assert not any(key.endswith(" 500") for key in tally), tally
    assert fps >= MIN_FPS, f"{fps:.1f} fps received under attack"
    assert longest <= MAX_GAP_S, f"longest gap {longest * 1000:.0f} ms under attack"


@pytest.mark.slow
@pytest.mark.parametrize("rate", ["shipped", "unlimited"])
async def test_live_session_keeps_its_frame_rate_under_accepted_offer_churn(rate: str) -> None:
    """Offers at the candidate cap, created and deleted back to back for 8 s: under the shipped creation rate
    (mostly 429s), and with the limit lifted (~50-80 accepted sessions/s, the loop ~80 % busy with WebRTC setup).
    Before the startup objects were frozen out of garbage collection, the unlimited churn cut the live session to
    20-22 fps with 350-600 ms gaps (full collections every ~2 s)."""
    sessions = CREATION_RATE if rate == "shipped" else {}
    async with fake_server(limits=LIMITS, sessions=sessions) as (url, state):
        at_cap = with_candidates(await offer_sdp(), state.settings.limits.max_sdp_candidates // 2 - 2)
        offers = [("at-cap offer", "/v1/sessions", json_offer(at_cap), "application/json")]
        fps, longest, tally = await measure_under_attack(url, [offers], 8.0)
    assert not any(key.endswith(" 500") for key in tally), tally
    if rate == "shipped":
        allowed = SHIPPED.creation_burst + 8.0 * SHIPPED.max_creations_per_s
        assert tally["at-cap offer 429"] > tally["at-cap offer 201"] and tally["at-cap offer 201"] <= allowed, tally
    else:
        assert tally["at-cap offer 201"] > 200 and not tally["at-cap offer 429"], tally
    assert fps >= MIN_FPS, f"{fps:.1f} fps received under churn"
    assert longest <= MAX_GAP_S, f"longest gap {longest * 1000:.0f} ms under churn"


async def test_session_creation_over_the_rate_is_429_with_retry_after() -> None:
    """The limit is one token bucket for SDP and WHEP creations; cheaper refusals (400, 503) take no token."""
    async with fake_server(sessions={"max_creations_per_s": 0.25, "creation_burst": 2}) as (url, state):
        sdp = await offer_sdp()
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            over_cap = with_candidates(sdp, state.settings.limits.max_sdp_candidates)
            assert (await http.post("/v1/sessions", json={"sdp": over_cap})).status_code == 400
            for _ in range(2):
                created = await http.post("/v1/sessions", json={"sdp": sdp})
                assert created.status_code == 201, created.text
                assert (await http.delete(created.headers["location"])).status_code == 204
            refused = [await http.post("/v1/sessions", json={"sdp": sdp}),
                       await http.post("/v1/whep", content=sdp, headers={"content-type": "application/sdp"})]
            metrics = (await http.get("/metrics")).text
        for response in refused:
            assert response.status_code == 429, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["type"] == "urn:omnilive:problem:rate_limited"
            assert 1 <= int(response.headers["retry-after"]) <= 4  # one token every 4 s
        assert 'omnilive_sessions_rejected_total{reason="rate"} 2.0' in metrics
        assert not state.manager.sessions


def test_rate_limiter_refills_and_says_how_long_to_wait() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 3, clock=lambda: now[0])
    assert [limiter.allow() for _ in range(4)] == [True, True, True, False]
    assert limiter.wait_s() == pytest.approx(0.5)
    now[0] = 0.25
    assert not limiter.allow() and limiter.wait_s() == pytest.approx(0.25)
    now[0] = 0.5
    assert limiter.allow() and not limiter.allow()
    now[0] = 100.0
    assert [limiter.allow() for _ in range(4)] == [True, True, True, False]   # never more than the burst
