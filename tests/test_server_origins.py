"""Cross-site writes and cross-origin embedding (issue 12, items 12 and 15)."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from avatar_server.origins import WriteGuard, accepted_type, normalise_origin
from avatar_server.testing import fake_server
from server_helpers import offer_sdp

pytestmark = pytest.mark.usefixtures("loopback_ice")

PROBLEM = "application/problem+json"
EVIL = "http://evil.example"
ALLOWED = "http://allowed.example"  # configs/server/test.yaml cors_origins
SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x")


def png(side: int = 96) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (150, 110, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["type"] == f"urn:omnilive:problem:{code}"


def multipart(data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with the image field, as an HTML form would send it."""
    boundary = "omniliveboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def test_blind_cross_site_writes_store_nothing_in_open_mode() -> None:
    """Item 12: simple (preflight-free) POSTs from a foreign origin get 403 and create nothing."""
    async with fake_server() as (url, state), httpx.AsyncClient(base_url=url) as http:
        image, form_type = multipart(png())
        sdp = await offer_sdp()
        for content_type in ("text/plain", "application/x-www-form-urlencoded"):
            headers = {"origin": EVIL, "content-type": content_type}
            assert_problem(await http.post("/v1/avatars", content=png(), headers=headers), 403, "forbidden_origin")
            assert_problem(await http.post("/v1/sessions", content=f'{{"sdp": {sdp!r}}}'.replace("'", '"'),
                                           headers=headers), 403, "forbidden_origin")
        assert_problem(await http.post("/v1/avatars", content=image, headers={"origin": EVIL, "content-type": form_type}),
                       403, "forbidden_origin")
        for origin in ("null", "http://evil.example:80@127.0.0.1", "garbage"):
            assert_problem(await http.post("/v1/avatars", content=png(), headers={"origin": origin,
                                                                                   "content-type": "image/png"}),
                           403, "forbidden_origin")
        assert_problem(await http.delete("/v1/avatars/default", headers={"origin": EVIL}), 403, "forbidden_origin")
        assert_problem(await http.post("/v1/whep", content=sdp, headers={"origin": EVIL,
                                                                          "content-type": "application/sdp"}),
                       403, "forbidden_origin")
        assert len(state.avatars) == 1 and len(state.manager) == 0  # only the built-in default
        assert (await http.get("/v1/avatars", headers={"origin": EVIL})).status_code == 200  # reads are CORS's job


async def test_form_like_bodies_are_415_even_without_an_origin() -> None:
    """Item 12: the routes that take JSON, SDP or an image refuse text and form bodies."""
    async with fake_server() as (url, state), httpx.AsyncClient(base_url=url) as http:
        sdp = await offer_sdp()
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "text/plain; charset=utf-8"):
            headers = {"content-type": content_type}
            assert_problem(await http.post("/v1/avatars", content=png(), headers=headers), 415, "unsupported_media")
            assert_problem(await http.post("/v1/sessions", content=b'{"sdp": "v=0"}', headers=headers),
                           415, "unsupported_media")
            assert_problem(await http.post("/v1/whep", content=sdp, headers=headers), 415, "unsupported_media")
        assert_problem(await http.post("/v1/sessions", content=b'{"sdp": "v=0"}'), 415, "unsupported_media")
        assert len(state.avatars) == 1 and len(state.manager) == 0


async def test_same_origin_configured_origins_and_tools_still_write() -> None:
    """The server's own pages, `cors_origins` and non-browser tools (no Origin) keep working."""
    async with fake_server() as (url, state), httpx.AsyncClient(base_url=url) as http:
        image, form_type = multipart(png())
        own = url  # the Host the request goes to
        for headers in ({"origin": own, "content-type": "image/png"}, {"origin": ALLOWED, "content-type": "image/webp"},
                        {"content-type": form_type}, {}, {"content-type": "application/octet-stream"},
                        {"origin": "http://proxy.example", "x-forwarded-host": "proxy.example",
                         "content-type": "image/png"}):
            body = image if headers.get("content-type") == form_type else png()
            created = await http.post("/v1/avatars", content=body, headers=headers)
            assert created.status_code == 201, (headers, created.text)
            assert (await http.delete(created.headers["location"], headers={"origin": own})).status_code == 204
        answer = await http.post("/v1/sessions", json={"sdp": await offer_sdp()},
                                 headers={"origin": ALLOWED, "content-type": "application/json; charset=utf-8"})
        assert answer.status_code == 201, answer.text
        assert answer.headers["access-control-allow-origin"] == ALLOWED
        assert (await http.delete(answer.headers["location"], headers={"origin": ALLOWED})).status_code == 204


async def test_client_modules_load_from_any_origin() -> None:
    """Item 15: the ES modules under /client/ carry CORS headers; the API answers only cors_origins."""
    async with fake_server() as (url, state), httpx.AsyncClient(base_url=url) as http:
        for origin in (EVIL, ALLOWED):
            module = await http.get("/client/src/index.js", headers={"origin": origin})
            assert module.status_code == 200 and "javascript" in module.headers["content-type"]
            allowed = module.headers.get_list("access-control-allow-origin")
            assert allowed in (["*"], [origin]), allowed
        api = await http.get("/v1/ice-servers", headers={"origin": EVIL})
        assert "access-control-allow-origin" not in api.headers


def test_origin_and_media_type_rules() -> None:
    assert normalise_origin("HTTPS://App.Example.com:443") == "https://app.example.com"
    assert normalise_origin("http://[::1]:8080") == "http://[::1]:8080"
    assert normalise_origin("null") == normalise_origin("ftp://x") == normalise_origin("http://x:99999") == ""
    guard = WriteGuard(None, ["https://app.example.com"])
    assert guard.origin_allowed("https://app.example.com", {})
    assert guard.origin_allowed("http://srv:8080", {b"host": b"srv:8080"})
    assert not guard.origin_allowed("http://srv:8081", {b"host": b"srv:8080"})
    assert WriteGuard(None, ["*"]).origin_allowed("http://anything.example", {})
    assert accepted_type("/v1/sessions", "application/merge-patch+json") is None
    assert accepted_type("/v1/avatars", "image/gif") is None  # the decoder says 415 with the real reason
    assert accepted_type("/v1/avatars", "text/plain") is not None
