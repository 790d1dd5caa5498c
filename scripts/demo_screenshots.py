"""Screenshots of the demo page talking: `omnilive serve` (the default model and avatar), Debian's Chromium
with a fake microphone playing recorded human speech with pauses, a screenshot of the avatar every
`--every` seconds, and a contact sheet with the microphone's loudness under each shot.

    .venv/bin/python scripts/demo_screenshots.py --out docs/images/demo --seconds 12
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from e2e_browser import demo_tab  # noqa: E402
from e2e_speech import human_speech, with_silences, write_wav  # noqa: E402

logger = logging.getLogger("demo_screenshots")
RATE = 48000
LEAD_S, TAIL_S = 1.5, 3.0  # silence before and after the speech in the fake microphone's loop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "demo")
    parser.add_argument("--seconds", type=float, default=12.0, help="how long to watch after connecting")
    parser.add_argument("--every", type=float, default=0.4, help="seconds between screenshots")
    parser.add_argument("--keep-shots", action="store_true", help="keep each screenshot, not only the contact sheet")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    speech = with_silences(human_speech(RATE), RATE, LEAD_S, TAIL_S)
    with tempfile.TemporaryDirectory() as tmp:
        wav = write_wav(Path(tmp) / "human.wav", speech)
        with demo_tab(Path(tmp), wav) as (tab, server):
            shots = watch(tab.page, server.url, args)
    contact_sheet(shots, args.out / "contact-sheet.png")
    if not args.keep_shots:
        for shot in shots:
            (args.out / shot.pop("file")).unlink()
    (args.out / "shots.json").write_text(json.dumps(shots, indent=1) + "\n")
    logger.info("%d screenshots in %s", len(shots), args.out)
    return 0


def watch(page, url: str, args: argparse.Namespace) -> list[dict]:
    """Start the demo, then screenshot the avatar's video element every `every` seconds."""
    page.goto(url + "/")
    page.click("#start")
    page.wait_for_function("document.body.dataset.status === 'connected'", timeout=30000)
    video = page.locator("omnilive-avatar")
    shots, began = [], time.monotonic()
    while time.monotonic() - began < args.seconds:
        t = time.monotonic() - began
        path = args.out / f"shot-{len(shots):03d}.png"
        video.screenshot(path=str(path))
        state = page.evaluate("document.body.dataset.speaking ?? document.getElementById('state')?.textContent ?? ''")
        shots.append({"t": round(t, 2), "file": path.name, "state": state})
        time.sleep(max(0.0, args.every - (time.monotonic() - began - t)))
    return shots


def contact_sheet(shots: list[dict], path: Path, columns: int = 10, size: int = 160) -> None:
    """All shots in a grid, each labelled with its time and the page's speaking state."""
    rows = -(-len(shots) // columns)
    sheet = Image.new("RGB", (columns * size, rows * (size + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, shot in enumerate(shots):
        image = Image.open(path.parent / shot["file"]).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size))
        x, y = (i % columns) * size, (i // columns) * (size + 14)
        sheet.paste(image, (x, y))
        draw.text((x + 2, y + size), f"{shot['t']:.1f}s {shot['state']}"[:26], fill="black")
    sheet.save(path)


if __name__ == "__main__":
    raise SystemExit(main())
