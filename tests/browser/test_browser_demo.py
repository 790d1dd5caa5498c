"""The demo page in headless Chromium against the real server: connect, frames, speaking, interrupt, tracks."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from e2e_browser import ROOT, Server, Tab, launch_chromium, open_tab
from e2e_speech import espeak_speech, resample, to_pcm16, with_silences

pytestmark = pytest.mark.browser

FRAME_WINDOW_MS = 2000
MIN_FRAMES_IN_WINDOW = 20
# The whole utterance goes in one audio-socket message (8 kHz PCM16 keeps ~9 s under the 256 KiB message
# limit), so once the server says "speaking" all of it is queued and an interrupt must drop the rest.
PUSH_RATE = 8000
POSE_KEYPOINTS = 106  # model/data/keypoints.py
DEFAULT_AVATAR = ROOT / "avatar_server" / "assets" / "default_avatar.png"


#################################################################################
#                                    Helpers                                    #
#################################################################################


def start_demo(tab: Tab, server: Server, query: str = "") -> str:
    """Open the demo, press Start, wait until connected; returns the session id."""
    tab.page.goto(f"{server.url}/?token={server.api_key}{query}")
    tab.page.click("#start")
    tab.page.wait_for_function("document.body.dataset.status === 'connected' || document.body.dataset.status === 'closed'")
    status = tab.page.evaluate("document.body.dataset.status")
    assert status == "connected", f"demo did not connect: {tab.e2e()['errors']}\n{server.log_tail()}"
    return tab.e2e()["sessionIds"][0]


def stop_demo(tab: Tab, server: Server, session_id: str) -> None:
    """Press Stop; the server must forget the session (DELETE reached it)."""
    tab.page.click("#stop")
    tab.page.wait_for_function("document.body.dataset.status === 'closed'")
    deadline = time.monotonic() + 10
    while server.request("GET", f"/v1/sessions/{session_id}", server.api_key)[0] != 404:
        assert time.monotonic() < deadline, f"session {session_id} still exists after Stop"
        time.sleep(0.1)


def track_report(tab: Tab) -> dict[str, Any]:
    """outputStream tracks and what the peer connection received per kind (getStats)."""
    return tab.page.evaluate(
        """async () => {
          const el = document.querySelector('omnilive-avatar');
          const stream = el.outputStream;
          const received = {};
          (await el.client.pc.getStats()).forEach((r) => {
            if (r.type === 'inbound-rtp') {
              received[r.kind] = { packets: r.packetsReceived, frames: r.framesDecoded ?? null, dropped: r.framesDropped ?? null };
            }
          });
          return {
            video: stream.getVideoTracks().map((t) => t.readyState),
            audio: stream.getAudioTracks().map((t) => t.readyState),
            received,
          };
        }"""
    )


def assert_clean(tab: Tab) -> None:
    assert tab.page_errors == [], f"uncaught page errors: {tab.page_errors}"
    assert tab.console_errors == [], f"console errors: {tab.console_errors}"


#################################################################################
#                                     Tests                                     #
#################################################################################


@pytest.mark.parametrize("serving", ["server", "cluster_server"])
def test_demo_connects_renders_and_carries_both_tracks(tab: Tab, serving: str, request: pytest.FixtureRequest) -> None:
    """Against `omnilive serve`, and once against a cluster front (media straight from its worker)."""
    server: Server = request.getfixturevalue(serving)
    session_id = start_demo(tab, server)
    connected_at = tab.e2e()["connectedAt"]
    tab.page.wait_for_function(f"performance.now() > {connected_at + FRAME_WINDOW_MS}")
    frames = [t for t in tab.e2e()["frameTimes"] if t <= connected_at + FRAME_WINDOW_MS]
    assert len(frames) >= MIN_FRAMES_IN_WINDOW, (
        f"{len(frames)} frames in the first 2 s after connect (first at +{frames[0] - connected_at:.0f} ms)"
        if frames else "no frame in the first 2 s after connect",
        track_report(tab), tab.page.evaluate("document.querySelector('omnilive-avatar').client.stats"),
        f"load average {os.getloadavg()}")

    tab.page.wait_for_function("document.getElementById('fps').textContent !== '–'", timeout=5000)
    readout = tab.page.evaluate("({fps: fps.textContent, latency: latency.textContent})")
    assert "/" in readout["fps"] and "ms" in readout["latency"], readout

    tracks = track_report(tab)
    assert tracks["video"] == ["live"] and tracks["audio"] == ["live"], tracks
    assert tracks["received"]["video"]["frames"] > 0, tracks
    assert tracks["received"]["audio"]["packets"] > 0, tracks

    stop_demo(tab, server, session_id)
    assert_clean(tab)


@pytest.mark.parametrize("voice", ["human", "espeak"])
def test_server_reports_speaking_while_the_wav_speaks(voice: str, playwright_driver: Any, speech_wavs: dict,
                                                      server: Server) -> None:
    chromium = launch_chromium(playwright_driver, speech_wavs[voice])
    try:
        tab = open_tab(chromium, microphone=True)
        session_id = start_demo(tab, server)
        spoke_at = tab.wait_for_state({"speaking"}, timeout_ms=20000)
        tab.wait_for_state({"silent", "idle"}, after_ms=spoke_at, timeout_ms=20000)
        stop_demo(tab, server, session_id)
        assert_clean(tab)
    finally:
        chromium.close()


def test_interrupt_stops_agent_speech(tab: Tab, server: Server) -> None:
    """Agent audio pushed on the audio socket makes the avatar speak; Interrupt drops the rest of it."""
    session_id = start_demo(tab, server, "&audio=none")
    time.sleep(1.0)
    assert "speaking" not in [s for _, s in tab.e2e()["states"]], "speaking before any audio was sent"

    speech = with_silences(espeak_speech(), 48000, 0.0, 0.0)
    pcm = to_pcm16(resample(speech, 48000, PUSH_RATE))
    speech_s = len(pcm) / 2 / PUSH_RATE
    audio_url = tab.page.evaluate("document.querySelector('omnilive-avatar').client.audioUrl")
    with ws_connect(f"{audio_url}&sample_rate={PUSH_RATE}", open_timeout=10) as socket:
        socket.send(pcm)
        socket.send('{"type": "flush"}')
        pushed_at = time.monotonic()
        spoke_at = tab.wait_for_state({"speaking"}, timeout_ms=10000)

        tab.page.click("#interrupt")
        clicked_at = tab.page.evaluate("performance.now()")
        quiet_at = tab.wait_for_state({"silent", "idle"}, after_ms=spoke_at, timeout_ms=10000)
        assert time.monotonic() - pushed_at < speech_s, "speech ended by itself before the interrupt took effect"

        time.sleep(1.5)
        later = [s for t, s in tab.e2e()["states"] if t > max(quiet_at, clicked_at)]
        assert "speaking" not in later, f"speaking again after interrupt: {later}"
    stop_demo(tab, server, session_id)
    assert_clean(tab)


def test_page_load_to_first_frame(tab: Tab, server: Server, record_property: Any) -> None:
    """Time from navigation start to the first presented avatar frame (autostart, microphone)."""
    tab.page.goto(f"{server.url}/?token={server.api_key}&autostart=1")
    tab.page.wait_for_function("document.getElementById('first-frame').dataset.msSinceLoad !== undefined")
    since_load = float(tab.page.evaluate("document.getElementById('first-frame').dataset.msSinceLoad"))
    since_start = float(tab.page.evaluate("document.getElementById('first-frame').dataset.msSinceStart"))
    record_property("page_load_to_first_frame_ms", since_load)
    record_property("start_to_first_frame_ms", since_start)
    print(f"\npage load -> first avatar frame: {since_load:.0f} ms (Start -> first frame {since_start:.0f} ms)")
    session_id = tab.e2e()["sessionIds"][0]
    stop_demo(tab, server, session_id)
    assert_clean(tab)


@pytest.mark.parametrize("serving", ["server", "cluster_server"])
def test_upload_an_avatar_and_talk_with_it(tab: Tab, serving: str, request: pytest.FixtureRequest) -> None:
    """Upload an image in the demo, it becomes the selected avatar, and the session uses it (a cluster front
    stores it on its workers)."""
    server: Server = request.getfixturevalue(serving)
    tab.page.goto(f"{server.url}/?token={server.api_key}")
    tab.page.set_input_files("#avatar-upload", str(DEFAULT_AVATAR))
    tab.page.wait_for_function("document.getElementById('upload-status').textContent.startsWith('Uploaded')")
    avatar_id = tab.page.input_value("#avatar-select")
    assert avatar_id != "default"
    try:
        tab.page.click("#start")
        tab.page.wait_for_function("document.body.dataset.status === 'connected'")
        session_id = tab.e2e()["sessionIds"][0]
        status, session = server.request("GET", f"/v1/sessions/{session_id}", server.api_key)
        assert (status, session["avatar"]) == (200, avatar_id)

        tab.page.fill("#text", "a calm presenter, nodding")
        tab.page.click("#text-form button[type=submit]")
        sent = tab.page.evaluate(f"""() => document.querySelector('omnilive-avatar').sendPose(
            Array.from({{ length: {POSE_KEYPOINTS} }}, (_, i) => [0.3 + 0.4 * (i % 10) / 10, 0.2 + 0.6 * i / {POSE_KEYPOINTS}, 1]))""")
        assert sent is True
        tab.page.wait_for_timeout(1000)
        assert tab.e2e()["errors"] == [], "the server rejected set_text or pose"
        stop_demo(tab, server, session_id)
    finally:
        server.request("DELETE", f"/v1/avatars/{avatar_id}", server.api_key)
    assert_clean(tab)


def test_session_ended_by_the_server(tab: Tab, server: Server) -> None:
    """When the server ends the session the page says so, does not reconnect, and can start again."""
    session_id = start_demo(tab, server, "&audio=none")
    assert server.request("DELETE", f"/v1/sessions/{session_id}", server.api_key)[0] == 204
    tab.page.wait_for_function("document.body.dataset.status === 'closed'")
    assert tab.e2e()["closed"][-1] == {"reason": "server", "error": None}
    tab.page.wait_for_timeout(1000)
    assert tab.e2e()["sessionIds"] == [session_id], "no reconnect after the server ended the session"
    assert tab.page.is_enabled("#start")
    tab.page.click("#start")
    tab.page.wait_for_function("document.body.dataset.status === 'connected'")
    stop_demo(tab, server, tab.e2e()["sessionIds"][-1])
    assert_clean(tab)


def test_reconnects_after_the_connection_drops(tab: Tab, server: Server) -> None:
    """The events channel dropping is reported (events_lost) and reopened on the same session (issue 12 item 14)."""
    first = start_demo(tab, server, "&audio=none")
    tab.page.evaluate("document.querySelector('omnilive-avatar').client.socket.close()")
    tab.page.wait_for_function("__e2e.sessionIds.length === 2 && document.body.dataset.status === 'connected'")
    seen = tab.e2e()
    assert [e["code"] for e in seen["errors"]] == ["events_lost"] and seen["errors"][0]["fatal"] is False
    assert seen["sessionIds"] == [first, first], "the events socket is reopened on the same session"
    assert server.request("GET", f"/v1/sessions/{first}", server.api_key)[0] == 200
    assert tab.page.evaluate("document.querySelector('omnilive-avatar').interrupt()") is True
    frames = len(seen["frameTimes"])
    tab.page.wait_for_function(f"__e2e.frameTimes.length >= {frames + 10}")  # the same <video> keeps playing
    stop_demo(tab, server, first)
    assert_clean(tab)
