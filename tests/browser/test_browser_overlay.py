"""The OBS overlay page and the chroma key of <omnilive-avatar> in Chromium (WebGL and 2D-canvas paths)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from e2e_browser import Server, Tab

pytestmark = pytest.mark.browser

FRAMES_BEFORE_SCREENSHOT = 10
RENDERERS = ["webgl", "canvas"]
STUDIO_TOP, STUDIO_BOTTOM = (35, 55, 110), (64, 84, 169)  # the default avatar's backdrop gradient
SKIN, HAIR = (236, 190, 158), (75, 45, 30)

# A page on the server's origin with a manual <omnilive-avatar> whose <video> plays a canvas: a studio
# gradient with a face on it, as the model draws the default avatar. Only the keying runs, no session.
SYNTHETIC_PAGE = """<!doctype html>
<html><head><style>html, body {{ margin: 0; background: transparent; }}
omnilive-avatar {{ width: 512px; height: 512px; }}</style></head>
<body><omnilive-avatar manual {attributes}></omnilive-avatar>
<script type="module">
  import '/client/src/index.js';
  const scene = document.createElement('canvas');
  scene.width = scene.height = 128;
  const ctx = scene.getContext('2d');
  (function paint() {{
    const sky = ctx.createLinearGradient(0, 0, 0, 128);
    sky.addColorStop(0, 'rgb({top})');
    sky.addColorStop(1, 'rgb({bottom})');
    ctx.fillStyle = sky;
    ctx.fillRect(0, 0, 128, 128);
    ctx.fillStyle = 'rgb({skin})';
    ctx.beginPath();
    ctx.ellipse(64, 72, 32, 42, 0, 0, 2 * Math.PI);
    ctx.fill();
    ctx.fillStyle = 'rgb({hair})';
    ctx.fillRect(34, 26, 60, 16);
    requestAnimationFrame(paint);
  }})();
  const avatar = document.querySelector('omnilive-avatar');
  let frames = 0;
  const count = () => {{ window.keyedFrames = ++frames; avatar.video.requestVideoFrameCallback(count); }};
  avatar.video.requestVideoFrameCallback(count);
  avatar.video.muted = true;
  avatar.video.srcObject = scene.captureStream(25);
  avatar.video.play();
</script></body></html>"""


#################################################################################
#                                    Helpers                                    #
#################################################################################


def screenshot_rgba(tab: Tab) -> np.ndarray:
    """Screenshot without the default white page background: RGBA [H, W, 4]."""
    return np.asarray(Image.open(io.BytesIO(tab.page.screenshot(omit_background=True))).convert("RGBA"))


def video_box(tab: Tab) -> tuple[int, int, int, int]:
    """Where the element shows the video (object-fit: contain), in CSS pixels: x0, y0, x1, y1."""
    box = tab.page.evaluate(
        """() => {
          const el = document.querySelector('omnilive-avatar');
          const r = el.getBoundingClientRect();
          const scale = Math.min(r.width / el.video.videoWidth, r.height / el.video.videoHeight);
          const w = el.video.videoWidth * scale, h = el.video.videoHeight * scale;
          return [r.x + (r.width - w) / 2, r.y + (r.height - h) / 2, w, h];
        }"""
    )
    x, y, w, h = box
    return int(x), int(y), int(x + w), int(y + h)


def border_band(alpha: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of a thin band just inside the video's edges (its studio backdrop)."""
    x0, y0, x1, y1 = box
    band = max(3, (x1 - x0) // 25)
    inner = alpha[y0 + 2:y1 - 2, x0 + 2:x1 - 2]
    return np.concatenate([inner[:band].ravel(), inner[-band:].ravel(), inner[:, :band].ravel(), inner[:, -band:].ravel()])


def open_synthetic(tab: Tab, server: Server, attributes: str) -> None:
    """Serve SYNTHETIC_PAGE at a URL of the server's origin (so /client/ modules load) and wait for frames."""
    html = SYNTHETIC_PAGE.format(attributes=attributes, top="{}, {}, {}".format(*STUDIO_TOP),
                                 bottom="{}, {}, {}".format(*STUDIO_BOTTOM), skin="{}, {}, {}".format(*SKIN),
                                 hair="{}, {}, {}".format(*HAIR))
    url = f"{server.url}/e2e/keying.html"
    tab.page.route(url, lambda route: route.fulfill(status=200, content_type="text/html", body=html))
    tab.page.goto(url)
    tab.page.wait_for_function(f"window.keyedFrames >= {FRAMES_BEFORE_SCREENSHOT}")


#################################################################################
#                          Chroma key (deterministic scene)                     #
#################################################################################


@pytest.mark.parametrize("renderer", RENDERERS)
def test_element_keys_the_studio_backdrop_to_transparent(renderer: str, tab: Tab, server: Server) -> None:
    open_synthetic(tab, server, f'background="transparent" renderer="{renderer}"')
    assert tab.page.evaluate("document.querySelector('omnilive-avatar').renderer") == renderer
    alpha = screenshot_rgba(tab)[..., 3]
    box = video_box(tab)
    x0, y0, x1, y1 = box
    assert (alpha[:, :max(0, x0 - 1)] == 0).all() and (alpha[:, x1 + 1:] == 0).all(), "the page is not transparent"
    band = border_band(alpha, box)
    assert (band == 0).mean() > 0.95, f"only {(band == 0).mean():.0%} of the backdrop is keyed out"
    scale = (x1 - x0) / 128
    face = alpha[int(y0 + 60 * scale):int(y0 + 90 * scale), int(x0 + 50 * scale):int(x0 + 78 * scale)]
    assert (face == 255).all(), "the face must stay opaque"
    assert tab.page_errors == [] and tab.console_errors == []


@pytest.mark.parametrize("renderer", RENDERERS)
def test_element_replaces_the_backdrop_with_a_colour(renderer: str, tab: Tab, server: Server) -> None:
    open_synthetic(tab, server, f'background="#00ff00" renderer="{renderer}"')
    rgba = screenshot_rgba(tab).astype(int)
    x0, y0, x1, y1 = video_box(tab)
    corner = rgba[y0 + 4:y0 + 12, x0 + 4:x0 + 12].reshape(-1, 4)
    assert (corner[:, 3] == 255).all() and (np.abs(corner[:, :3] - [0, 255, 0]) <= 8).all(), corner[:3]
    scale = (x1 - x0) / 128
    face = rgba[int(y0 + 75 * scale), int(x0 + 64 * scale)]
    assert (np.abs(face[:3] - SKIN) <= 12).all() and face[3] == 255, face


def test_key_color_attribute_overrides_the_border_estimate(tab: Tab, server: Server) -> None:
    """key-color = the skin colour: the face goes transparent and the backdrop stays."""
    open_synthetic(tab, server, 'background="transparent" key-color="rgb({}, {}, {})"'.format(*SKIN))
    alpha = screenshot_rgba(tab)[..., 3]
    box = video_box(tab)
    x0, y0, x1, _ = box
    scale = (x1 - x0) / 128
    assert alpha[int(y0 + 75 * scale), int(x0 + 64 * scale)] == 0
    assert (border_band(alpha, box) == 255).mean() > 0.95


#################################################################################
#                        The overlay page on the real server                    #
#################################################################################


def open_overlay(tab: Tab, server: Server, query: str) -> np.ndarray:
    """The overlay page connected and showing frames; its screenshot's alpha [H, W]."""
    tab.page.goto(f"{server.url}/overlay?token={server.api_key}&avatar=default{query}")
    tab.page.wait_for_function("document.body.dataset.status === 'connected'")
    tab.page.wait_for_function(f"__e2e.frameTimes.length >= {FRAMES_BEFORE_SCREENSHOT}")
    return screenshot_rgba(tab)[..., 3]


@pytest.mark.parametrize("renderer", RENDERERS)
def test_overlay_page_streams_the_avatar_on_a_transparent_page(renderer: str, tab: Tab, server: Server) -> None:
    alpha = open_overlay(tab, server, f"&background=transparent&renderer={renderer}")
    assert tab.page.evaluate("document.querySelector('omnilive-avatar').renderer") == renderer
    x0, _, x1, _ = video_box(tab)
    assert (alpha[:, :max(0, x0 - 1)] == 0).all() and (alpha[:, x1 + 1:] == 0).all(), "the page is not transparent"
    assert (alpha[:, x0 + 2:x1 - 2] > 0).any(), "nothing of the avatar is drawn"
    assert tab.page_errors == [] and tab.console_errors == []


def test_overlay_page_keys_the_generated_backdrop(tab: Tab, server: Server) -> None:
    """With trained weights the model paints the avatar's studio backdrop, which the overlay keys out."""
    model = str(server.request("GET", "/readyz")[1].get("model", ""))
    if model.startswith("random-init"):
        pytest.skip("the server runs a random-init model (no weights/tiny yet): its frames are noise with no backdrop "
                    "to key; the keying itself is covered by test_element_keys_the_studio_backdrop_to_transparent")
    alpha = open_overlay(tab, server, "&background=transparent")
    box = video_box(tab)
    backdrop = (border_band(alpha, box) < 32).mean()
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) // 2, (y0 + y1) // 2, (x1 - x0) // 8, (y1 - y0) // 8
    body = (alpha[cy - ry:cy + ry, cx - rx:cx + rx] < 32).mean()  # the avatar's centre: face / torso
    print(f"keyed: backdrop {backdrop:.0%}, body {body:.0%}")
    assert backdrop > 0.5, f"only {backdrop:.0%} of the generated backdrop is keyed out ({model})"
    assert body < 0.2, f"{body:.0%} of the avatar's body is keyed out too ({model})"
    assert tab.page_errors == [] and tab.console_errors == []


def test_overlay_page_is_transparent_before_the_first_frame(tab: Tab, server: Server) -> None:
    """Before any frame arrives the whole page is transparent: nothing flashes in OBS."""
    tab.page.route("**/v1/ice-servers", lambda route: None)  # hold the connection attempt
    tab.page.goto(f"{server.url}/overlay?token={server.api_key}")
    assert (screenshot_rgba(tab)[..., 3] == 0).all()
