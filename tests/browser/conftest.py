"""Browser end-to-end fixtures: a real `omnilive serve` subprocess and Debian's Chromium driven by Playwright."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from e2e_browser import (
    API_KEY,
    CHROMIUM,
    Server,
    Tab,
    close_tab,
    launch_chromium,
    non_loopback_ipv4,
    open_tab,
    spawn_server,
    stop_server,
    wait_healthy,
)
from e2e_speech import espeak_speech, human_speech, with_silences, write_wav

#################################################################################
#                                 Preconditions                                 #
#################################################################################


def require_browser_stack() -> None:
    """Fail (with the reason) when this machine lacks what the browser tests need: setup.sh installs it."""
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"Chromium not found at {CHROMIUM} (apt-get install chromium; scripts/setup.sh does)"
    elif non_loopback_ipv4() is None:
        reason = "no non-loopback IPv4 address: aiortc offers no host candidate Chromium can reach"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install playwright; never `playwright install`)"
    if reason is not None:
        pytest.fail(reason)


#################################################################################
#                                    Server                                     #
#################################################################################


CLUSTER_START_TIMEOUT_S = 240.0  # Ray, then the worker's model
SERVER_SETTINGS = {
    "OMNILIVE_AUTH__API_KEYS": f"[{API_KEY}]",
    "OMNILIVE_SESSIONS__MAX_SESSIONS": "3",
    "OMNILIVE_SESSIONS__RETRY_AFTER_S": "7",
}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server (the configured model), API keys on, 3 session slots, Retry-After 7 s when full."""
    running = spawn_server(tmp_path_factory.mktemp("server"), "server", SERVER_SETTINGS)
    running.api_key = API_KEY
    try:
        yield wait_healthy(running)
    finally:
        stop_server(running)


CLUSTER_SETTINGS = {
    **SERVER_SETTINGS,
    "OMNILIVE_CLUSTER__WORKERS": "1",            # one worker with the real model: a 2-core machine runs one
    "OMNILIVE_CLUSTER__WORKER__NUM_GPUS": "0",
    "OMNILIVE_CLUSTER__LOCAL_CPUS": "2",
}


@pytest.fixture(scope="session")
def cluster_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`omnilive serve --cluster local`: the front, and its worker on a Ray instance of its own (docs/cluster.md)."""
    running = spawn_server(tmp_path_factory.mktemp("cluster"), "cluster", CLUSTER_SETTINGS, ("--cluster", "local"))
    running.api_key = API_KEY
    try:
        yield wait_healthy(running, CLUSTER_START_TIMEOUT_S, probe="/readyz")
    finally:
        stop_server(running)


#################################################################################
#                                    Browser                                    #
#################################################################################


@pytest.fixture(scope="session")
def speech_wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fake-microphone WAVs (48 kHz mono): 1 s silence, speech, 2.5 s silence; Chromium loops them."""
    folder = tmp_path_factory.mktemp("wavs")
    return {
        "human": write_wav(folder / "human.wav", with_silences(human_speech(), 48000, 1.0, 2.5)),
        "espeak": write_wav(folder / "espeak.wav", with_silences(espeak_speech(), 48000, 1.0, 2.5)),
    }


# Module scope: the sync API runs an event loop on this thread while it lives, which would break
# the asyncio tests that run after the browser modules.
@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Any]:
    require_browser_stack()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright_driver: Any, speech_wavs: dict[str, Path]) -> Iterator[Any]:
    """Chromium whose fake microphone speaks the human recording."""
    chromium = launch_chromium(playwright_driver, speech_wavs["human"])
    yield chromium
    chromium.close()


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    """A page with the microphone granted; closed (session ended) after the test."""
    opened = open_tab(browser, microphone=True)
    yield opened
    close_tab(opened)
