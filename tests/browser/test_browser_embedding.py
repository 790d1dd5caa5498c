"""Embedding from another site and a blocked events socket, in Chromium (issue 12, items 14 and 15).

The page is served by a second HTTP server on another port (another origin) and imports the client
module from the avatar server, as the client README's one-tag example does.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from e2e_browser import Server, Tab, close_tab, free_port, open_tab, spawn_server, stop_server, wait_healthy

pytestmark = pytest.mark.browser

# The one-tag example of client/README.md, with audio "none" (no microphone needed).
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>embedded avatar</title></head>
<body>
<script type="module" src="{server}/client/src/index.js"></script>
<omnilive-avatar server="{server}" avatar="default" audio="none" style="width: 256px; height: 256px"></omnilive-avatar>
</body></html>
"""

# Records the reconnecting events (the shared recorder skips them) and the client's status at each event.
RECONNECT_RECORDER = """
window.__events = [];
for (const type of ['connected', 'error', 'reconnecting', 'stats']) {
  document.addEventListener(type, (e) => __events.push({ type, detail: type === 'connected'
    ? { sessionId: e.detail.sessionId, reconnected: e.detail.reconnected, channel: e.detail.channel ?? null }
    : e.detail, status: e.target.client ? e.target.client.status : null, at: performance.now() }));
}
"""

# Blocks the first `count` events sockets: they go to a port nobody listens on, so Chromium fails them
# for real (error, then close 1006), as a firewall or a proxy without WebSocket upgrades does.
BLOCK_EVENTS_SOCKETS = """
(() => {
  const Real = window.WebSocket;
  let blocked = 0;
  window.__blockedSockets = 0;
  window.WebSocket = class extends Real {
    constructor(url, protocols) {
      const block = String(url).includes('/events') && blocked < %d;
      if (block) { blocked += 1; window.__blockedSockets = blocked; }
      super(block ? 'ws://127.0.0.1:%d/blocked' : url, protocols);
    }
  };
})();
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access lines on stderr."""


@functools.cache
def _page_dir(root: Path, server_url: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text(PAGE.format(server=server_url))
    return root


@pytest.fixture(scope="module")
def page_port() -> int:
    """The port of the page server whose origin the avatar server allows (cors_origins)."""
    return free_port()


@pytest.fixture(scope="module")
def embedding_server(tmp_path_factory: pytest.TempPathFactory, page_port: int) -> Iterator[Server]:
    """An open avatar server that lists the page server's origin in cors_origins."""
    settings = {"OMNILIVE_CORS_ORIGINS": f'["http://127.0.0.1:{page_port}"]', "OMNILIVE_SESSIONS__MAX_SESSIONS": "3"}
    running = spawn_server(tmp_path_factory.mktemp("embedding"), "embedding", settings)
    try:
        yield wait_healthy(running)
    finally:
        stop_server(running)


def serve_page(folder: Path, port: int) -> tuple[str, http.server.ThreadingHTTPServer]:
    """python's http.server for `folder` on 127.0.0.1:`port` in a thread; (url, server)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}", httpd


@pytest.fixture(scope="module")
def page_site(tmp_path_factory: pytest.TempPathFactory, embedding_server: Server, page_port: int) -> Iterator[str]:
    """The allowed second origin serving the one-tag page."""
    folder = _page_dir(tmp_path_factory.mktemp("site"), embedding_server.url)
    url, httpd = serve_page(folder, page_port)
    yield url
    httpd.shutdown()


@pytest.fixture
def plain_tab(browser: Any) -> Iterator[Tab]:
    opened = open_tab(browser, microphone=False)
    opened.page.add_init_script(RECONNECT_RECORDER)
    yield opened
    close_tab(opened)


def wait_frames(tab: Tab, count: int = 15) -> None:
    tab.page.wait_for_function(f"__e2e.connectedAt !== null && __e2e.frameTimes.length >= {count}", timeout=30000)


def test_one_tag_embedding_from_another_origin_connects(plain_tab: Tab, page_site: str,
                                                        embedding_server: Server) -> None:
    """Item 15: the page on :page_port imports the module from the server and gets a live avatar."""
    tab = plain_tab
    assert page_site != embedding_server.url
    tab.page.goto(f"{page_site}/index.html")
    wait_frames(tab)
    tab.page.wait_for_function("__events.some((e) => e.type === 'stats')", timeout=15000)
    assert tab.page.evaluate("document.querySelector('omnilive-avatar').client.status") == "connected"
    assert tab.page.evaluate("document.querySelector('omnilive-avatar').interrupt()") is True
    assert tab.e2e()["errors"] == []
    assert tab.page_errors == [] and tab.console_errors == []


def test_an_origin_not_in_cors_origins_cannot_use_the_api(plain_tab: Tab, embedding_server: Server,
                                                          tmp_path: Path) -> None:
    """The module still loads from anywhere, but the API answers only the configured origins."""
    folder = _page_dir(tmp_path / "other", embedding_server.url)
    url, httpd = serve_page(folder, free_port())
    try:
        tab = plain_tab
        tab.page.goto(f"{url}/index.html")
        tab.page.wait_for_function("__e2e.errors.length > 0", timeout=20000)
        assert tab.e2e()["errors"][0]["code"] == "server_unreachable"
        assert tab.page.evaluate("customElements.get('omnilive-avatar') !== undefined")
        assert embedding_server.request("GET", "/readyz")[1]["sessions"] == 0
    finally:
        httpd.shutdown()


def test_blocked_events_socket_is_reported_and_reopened(plain_tab: Tab, page_site: str) -> None:
    """Item 14: Chromium fails the first two events sockets; the element reports events_lost, reports
    `reconnecting` (channel events) with a growing delay, reopens the socket on the same session, and
    commands work again. Frames flow throughout."""
    tab = plain_tab
    tab.page.add_init_script(BLOCK_EVENTS_SOCKETS % (2, free_port()))
    tab.page.goto(f"{page_site}/index.html")
    tab.page.wait_for_function("__events.some((e) => e.type === 'error' && e.detail.code === 'events_lost')",
                               timeout=20000)
    tab.page.wait_for_function("__events.some((e) => e.type === 'connected' && e.detail.channel === 'events')",
                               timeout=20000)
    events = tab.page.evaluate("__events")
    lost = next(e for e in events if e["type"] == "error")
    assert lost["detail"]["fatal"] is False and lost["status"] in ("connecting", "reconnecting")
    retries = [e["detail"] for e in events if e["type"] == "reconnecting"]
    assert [r.get("channel") for r in retries] == ["events", "events"], retries
    assert retries[1]["delayMs"] > retries[0]["delayMs"]
    sessions = {e["detail"]["sessionId"] for e in events if e["type"] == "connected"}
    assert len(sessions) == 1, f"the session must be kept: {sessions}"
    assert tab.page.evaluate("__blockedSockets") == 2
    assert tab.page.evaluate("document.querySelector('omnilive-avatar').client.status") == "connected"
    assert tab.page.evaluate("document.querySelector('omnilive-avatar').interrupt()") is True
    tab.page.wait_for_function("__events.some((e, i) => e.type === 'stats' && __events.slice(0, i).some("
                               "(c) => c.type === 'connected' && c.detail.channel === 'events'))", timeout=15000)
    wait_frames(tab, 25)
    assert tab.page_errors == []
