"""Error paths in the browser: denied microphone, full server (503), wrong token, unreachable server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

import server_helpers  # tests/server_helpers.py
from e2e_browser import Server, Tab, close_tab, free_port, open_tab

pytestmark = pytest.mark.browser

# What Chromium itself logs for a failed request; expected on these paths, unlike script errors.
NETWORK_NOISE = ("Failed to load resource", "net::ERR_CONNECTION_REFUSED")


@pytest.fixture
def denied_tab(browser: Any) -> Iterator[Tab]:
    """A page whose microphone permission is not granted (prompts are denied)."""
    opened = open_tab(browser, microphone=False)
    yield opened
    close_tab(opened)


def press_start_expect_error(tab: Tab, code: str) -> dict[str, Any]:
    """Press Start, wait for the error banner with `code`; the page must be back to a startable state."""
    tab.page.click("#start")
    tab.page.wait_for_function(f"document.getElementById('error').dataset.code === '{code}'")
    tab.page.wait_for_function("document.body.dataset.status === 'closed'")
    assert tab.page.is_enabled("#start"), "Start must be usable again after an error"
    assert not tab.page.is_enabled("#interrupt")
    errors = [e for e in tab.e2e()["errors"] if e["code"] == code]
    assert errors, tab.e2e()["errors"]
    return errors[-1]


def assert_only_network_noise(tab: Tab) -> None:
    assert tab.page_errors == [], f"uncaught page errors: {tab.page_errors}"
    assert tab.unexpected_console_errors(NETWORK_NOISE) == []


def test_microphone_denied_then_page_still_works(denied_tab: Tab, server: Server) -> None:
    tab = denied_tab
    tab.page.goto(f"{server.url}/?token={server.api_key}")
    error = press_start_expect_error(tab, "microphone_denied")
    assert error["fatal"] is True
    assert "Microphone access was denied" in tab.page.text_content("#error-text")
    assert server.request("GET", "/readyz")[1]["sessions"] == 0, "no session may be created without audio"

    tab.page.select_option("#audio-select", "none")
    tab.page.click("#start")
    tab.page.wait_for_function("document.body.dataset.status === 'connected'")
    assert tab.page.is_hidden("#error")
    tab.page.click("#stop")
    tab.page.wait_for_function("document.body.dataset.status === 'closed'")
    assert tab.page_errors == [] and tab.console_errors == []


def offer_sdp() -> str:
    """A real (aiortc) offer with recvonly video and audio, as a second client would send."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Playwright's sync API owns this thread's loop
        return pool.submit(asyncio.run, server_helpers.offer_sdp()).result()


@pytest.fixture
def full_server(server: Server) -> Iterator[Server]:
    """The server with every session slot taken by other clients (sessions that are still connecting)."""
    sdp, taken = offer_sdp(), []
    try:
        while True:
            status, body = server.request("POST", "/v1/sessions", server.api_key, {"sdp": sdp, "type": "offer"})
            if status == 503:
                break
            assert status == 201, body
            taken.append(body["session_id"])
            assert len(taken) <= int(server.env["OMNILIVE_SESSIONS__MAX_SESSIONS"]), "the server never fills up"
        yield server
    finally:
        for session_id in taken:
            server.request("DELETE", f"/v1/sessions/{session_id}", server.api_key)


def test_server_full_returns_busy_with_retry_after(tab: Tab, full_server: Server) -> None:
    tab.page.goto(f"{full_server.url}/?token={full_server.api_key}")
    error = press_start_expect_error(tab, "server_busy")
    assert error["status"] == 503
    assert error["retryAfter"] == int(full_server.env["OMNILIVE_SESSIONS__RETRY_AFTER_S"])
    assert f"Try again in {error['retryAfter']} s" in tab.page.text_content("#error-text")
    press_start_expect_error(tab, "server_busy")  # still usable: a second try gives the same clear answer
    assert_only_network_noise(tab)


def test_wrong_token_is_unauthorized(tab: Tab, server: Server) -> None:
    tab.page.goto(f"{server.url}/?token=not-the-key")
    tab.page.wait_for_function("document.getElementById('error').dataset.code === 'unauthorized'")  # avatar list
    error = press_start_expect_error(tab, "unauthorized")
    assert error["status"] in (401, 403)
    assert "refused the token" in tab.page.text_content("#error-text")

    result = tab.page.evaluate(
        """async () => {
          const { AvatarClient } = await import('/client/src/index.js');
          const client = new AvatarClient();
          const events = [];
          client.on('error', (e) => events.push(e.code));
          client.on('closed', (e) => events.push('closed:' + e.reason));
          try { await client.connect({ token: 'not-the-key', audio: 'none' }); return { resolved: true }; }
          catch (e) { return { name: e.name, code: e.code, status: e.status, events }; }
        }"""
    )
    assert result == {"name": "AvatarError", "code": "unauthorized", "status": result["status"],
                      "events": ["unauthorized", "closed:error"]}
    assert result["status"] in (401, 403)
    assert_only_network_noise(tab)


def test_unreachable_server(tab: Tab, server: Server) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    tab.page.goto(f"{server.url}/?token={server.api_key}&server={nowhere}")
    error = press_start_expect_error(tab, "server_unreachable")
    assert nowhere.split("//")[1] in error["message"]
    assert_only_network_noise(tab)


def test_overlay_waits_transparently_while_the_server_is_full(tab: Tab, full_server: Server) -> None:
    """An OBS overlay has nobody to read an error: it stays invisible and schedules a retry."""
    tab.page.goto(f"{full_server.url}/overlay?token={full_server.api_key}")
    tab.page.wait_for_function("__e2e.closed.length > 0")
    assert tab.e2e()["closed"][0]["error"]["code"] == "server_busy"
    png = tab.page.screenshot(omit_background=True)
    assert (np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))[..., 3] == 0).all()
    assert_only_network_noise(tab)
