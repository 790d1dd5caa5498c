"""Browser end-to-end helpers: run `omnilive serve` as a subprocess, drive Debian's Chromium, record the page."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("OMNILIVE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
API_KEY = "e2e-secret-key"
SERVER_START_TIMEOUT_S = 120.0
# FIELD-NOTES "Testing a real browser here", plus: a fake microphone fed from a WAV, sound without a
# click, and permission prompts denied (a test grants the microphone per context, or not).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--deny-permission-prompts",
]

# Records what the page's <omnilive-avatar> reports (its events bubble to the document) and counts the
# frames its <video> presents (requestVideoFrameCallback) from the first `connected` event on.
RECORDER = """
window.__e2e = { states: [], errors: [], closed: [], connectedAt: null, frameTimes: [], sessionIds: [] };
document.addEventListener('state', (e) => __e2e.states.push([performance.now(), e.detail.state]));
document.addEventListener('error', (e) => e.detail && e.detail.code && __e2e.errors.push(e.detail));
document.addEventListener('closed', (e) => __e2e.closed.push(e.detail));
document.addEventListener('connected', (e) => {
  __e2e.sessionIds.push(e.detail.sessionId);
  if (__e2e.connectedAt !== null) return;
  __e2e.connectedAt = performance.now();
  const video = e.target.video;
  const onFrame = (now) => { __e2e.frameTimes.push(performance.now()); video.requestVideoFrameCallback(onFrame); };
  video.requestVideoFrameCallback(onFrame);
});
"""


#################################################################################
#                                    Server                                     #
#################################################################################


def non_loopback_ipv4() -> str | None:
    """An IPv4 address other than 127.x: aioice never offers loopback, so Chromium needs this one."""
    import psutil

    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running `omnilive serve` subprocess."""

    url: str
    process: subprocess.Popen
    log: Path
    api_key: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def request(self, method: str, path: str, token: str | None = None,
                body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """A JSON call; (status, body)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
                return response.status, json.loads(body) if body else {}
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")


def serve_command(port: int) -> list[str]:
    """The command line users run: `omnilive serve` (as `python -m omnilive_cli`)."""
    return [sys.executable, "-m", "omnilive_cli", "serve", "--host", "0.0.0.0", "--port", str(port)]


def spawn_server(tmp: Path, name: str, settings: dict[str, str], extra_args: tuple[str, ...] = ()) -> Server:
    """Start `python -m omnilive_cli serve [extra_args]` on a free port with OMNILIVE_* settings (not yet healthy)."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **settings}
    log = tmp / f"{name}.log"
    command = [*serve_command(port), *extra_args]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Server(url=f"http://127.0.0.1:{port}", process=process, log=log, env=settings)


def wait_healthy(server: Server, timeout_s: float = SERVER_START_TIMEOUT_S, probe: str = "/healthz") -> Server:
    """Poll `probe` (/healthz answers once the model is loaded and the default avatar encoded; a cluster
    front's /readyz once a worker serves)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"omnilive serve exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + probe, timeout=2) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    stop_server(server)
    raise RuntimeError(f"omnilive serve not healthy after {timeout_s} s:\n{server.log_tail()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


#################################################################################
#                                    Browser                                    #
#################################################################################


def launch_chromium(driver: Any, wav: Path) -> Any:
    """Debian's Chromium (never a downloaded one) with a fake microphone playing `wav`."""
    return driver.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={wav}"])


@dataclass
class Tab:
    """A page plus everything it logged."""

    page: Any
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def unexpected_console_errors(self, allowed: tuple[str, ...] = ()) -> list[str]:
        return [text for text in self.console_errors if not any(part in text for part in allowed)]

    def e2e(self) -> dict[str, Any]:
        """What the recorder saw."""
        return self.page.evaluate("window.__e2e")

    def wait_for_state(self, wanted: set[str], after_ms: float = 0.0, timeout_ms: float = 20000) -> float:
        """Wait for a state event in `wanted` later than `after_ms` (page clock); returns its time."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(
                "([wanted, after]) => __e2e.states.some(([t, s]) => t > after && wanted.includes(s))",
                arg=[sorted(wanted), after_ms], timeout=timeout_ms)
        except PlaywrightTimeout as error:
            seen = self.e2e()
            raise AssertionError(f"no state in {sorted(wanted)} after {after_ms:.0f} ms within {timeout_ms:.0f} ms; "
                                 f"states {seen['states']}, errors {seen['errors']}") from error
        states = self.e2e()["states"]
        return next(t for t, s in states if t > after_ms and s in wanted)


def close_tab(tab: Tab) -> None:
    """Stop every avatar on the page (their sessions end on the server), then close the context."""
    try:
        tab.page.evaluate("Promise.all([...document.querySelectorAll('omnilive-avatar')].map((el) => el.stop()))")
    finally:
        tab.page.context.close()


def open_tab(browser: Any, microphone: bool = True) -> Tab:
    """A fresh context (microphone granted or not) with the recorder and console capture."""
    context = browser.new_context(permissions=["microphone"] if microphone else [], viewport={"width": 960, "height": 720})
    context.add_init_script(RECORDER)
    page = context.new_page()
    page.set_default_timeout(20000)
    tab = Tab(page)
    page.on("console", lambda message: message.type == "error" and tab.console_errors.append(message.text))
    page.on("pageerror", lambda error: tab.page_errors.append(str(error)))
    return tab


@contextmanager
def demo_tab(tmp: Path, wav: Path) -> Iterator[tuple[Tab, Server]]:
    """`omnilive serve` (the default model and avatar) and Debian's Chromium whose fake microphone plays `wav`:
    a tab allowed the microphone, and the server; both closed on exit (the scripts' demo runs)."""
    from playwright.sync_api import sync_playwright

    server = wait_healthy(spawn_server(tmp, "server", {}))
    try:
        with sync_playwright() as driver:
            browser = launch_chromium(driver, wav)
            tab = open_tab(browser, microphone=True)
            try:
                yield tab, server
            finally:
                close_tab(tab)
                browser.close()
    finally:
        stop_server(server)
