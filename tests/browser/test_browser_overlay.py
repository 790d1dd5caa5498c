"""The OBS overlay page: a transparent page whose avatar background is chroma-keyed away."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from e2e_browser import Server, Tab

pytestmark = pytest.mark.browser

FRAMES_BEFORE_SCREENSHOT = 10


def overlay_screenshot(tab: Tab, server: Server, query: str) -> np.ndarray:
    """Open the overlay, wait for keyed frames, screenshot without the default white page: RGBA [H, W, 4]."""
    tab.page.goto(f"{server.url}/overlay?token={server.api_key}{query}")
    tab.page.wait_for_function("document.body.dataset.status === 'connected'")
    tab.page.wait_for_function(f"__e2e.frameTimes.length >= {FRAMES_BEFORE_SCREENSHOT}")
    png = tab.page.screenshot(omit_background=True)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def avatar_box(tab: Tab) -> dict[str, float]:
    """Where the keyed canvas shows the video (object-fit: contain) in CSS pixels."""
    return tab.page.evaluate(
        """() => {
          const el = document.querySelector('omnilive-avatar');
          const r = el.getBoundingClientRect();
          const scale = Math.min(r.width / el.video.videoWidth, r.height / el.video.videoHeight);
          const w = el.video.videoWidth * scale, h = el.video.videoHeight * scale;
          return { x: r.x + (r.width - w) / 2, y: r.y + (r.height - h) / 2, w, h };
        }"""
    )


@pytest.mark.parametrize("renderer", ["webgl", "canvas"])
def test_overlay_is_transparent_outside_the_avatar(renderer: str, tab: Tab, server: Server) -> None:
    rgba = overlay_screenshot(tab, server, f"&avatar=default&background=transparent&renderer={renderer}")
    assert tab.page.evaluate("document.querySelector('omnilive-avatar').renderer") == renderer
    alpha = rgba[..., 3]
    height, width = alpha.shape
    box = avatar_box(tab)
    x0, y0 = int(box["x"]), int(box["y"])
    x1, y1 = int(box["x"] + box["w"]), int(box["y"] + box["h"])

    # Outside the video: the page itself is transparent (no white body, no black letterbox).
    assert (alpha[:, : max(0, x0 - 2)] == 0).all() and (alpha[:, min(width, x1 + 2):] == 0).all()
    # Inside the video: its studio background (the frame's border) is keyed out ...
    band = max(2, int(0.04 * box["w"]))
    border = np.concatenate([alpha[y0 + 2:y0 + band, x0 + 2:x1 - 2].ravel(), alpha[y1 - band:y1 - 2, x0 + 2:x1 - 2].ravel()])
    assert (border < 32).mean() > 0.9, f"only {(border < 32).mean():.0%} of the frame's border band is transparent"
    # ... and the avatar in the middle stays opaque.
    centre = alpha[y0 + int(0.3 * box["h"]):y0 + int(0.7 * box["h"]), x0 + int(0.3 * box["w"]):x0 + int(0.7 * box["w"])]
    assert (centre > 224).mean() > 0.5, f"only {(centre > 224).mean():.0%} of the avatar's centre is opaque"
    assert tab.page_errors == [] and tab.console_errors == [], (tab.page_errors, tab.console_errors)


def test_overlay_solid_colour_background(tab: Tab, server: Server) -> None:
    """background=<colour> replaces the studio background with that colour, opaque everywhere in the frame."""
    rgba = overlay_screenshot(tab, server, "&avatar=default&background=%2300ff00")
    box = avatar_box(tab)
    x0, y0 = int(box["x"]) + 3, int(box["y"]) + 3
    corner = rgba[y0:y0 + 6, x0:x0 + 6].reshape(-1, 4).astype(int)
    assert (corner[:, 3] == 255).all()
    assert (np.abs(corner[:, :3] - [0, 255, 0]) < 40).all(), corner[:4]


def test_overlay_page_has_no_opaque_page_background(tab: Tab, server: Server) -> Any:
    """Before any frame arrives (no session yet) the whole page is transparent: nothing flashes in OBS."""
    tab.page.route("**/v1/ice-servers", lambda route: None)  # hold the connection attempt
    tab.page.goto(f"{server.url}/overlay?token={server.api_key}")
    png = tab.page.screenshot(omit_background=True)
    alpha = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))[..., 3]
    assert (alpha == 0).all()
