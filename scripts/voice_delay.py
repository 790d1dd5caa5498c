"""Microphone -> the avatar's voice, measured in the page: `omnilive serve`, the demo page in Debian's Chromium
with a fake microphone playing recorded human speech with pauses (looped), for `--seconds`.

In the page, Web Audio reads the loudness envelope (one RMS per 1,024 samples) of two tracks on one clock:
the microphone track the page sends, and the avatar's audio track it receives (after the jitter buffer, as
it goes to the speakers). The avatar speaks the microphone's audio, so its envelope is the microphone's,
later: per window of `--window` seconds the delay is the lag that best correlates the two log envelopes.
The figure leaves out the sound card's output latency (a few ms to tens of ms, per device); the page's jitter
buffers' mean delays (WebRTC stats) are reported beside it.

    .venv/bin/python scripts/voice_delay.py --seconds 180 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from e2e_browser import demo_tab  # noqa: E402
from e2e_speech import human_speech, with_silences, write_wav  # noqa: E402

logger = logging.getLogger("voice_delay")
RATE = 48000
LEAD_S, TAIL_S = 1.0, 1.5  # silence around the speech in the fake microphone's loop
MAX_LAG_S = 2.0

# Records [context time, RMS] of the microphone and the avatar's audio every 1,024 samples into window.__levels,
# and the server's stats events (with their context time) into window.__stats.
RECORDER = """
() => {
  const pc = document.querySelector('omnilive-avatar').client.pc;
  const mic = pc.getSenders().map((s) => s.track).find((t) => t && t.kind === 'audio');
  const voice = pc.getReceivers().map((r) => r.track).find((t) => t && t.kind === 'audio');
  const ctx = new AudioContext();
  const mute = ctx.createGain();
  mute.gain.value = 0;
  mute.connect(ctx.destination);
  window.__levels = {mic: [], voice: [], rate: ctx.sampleRate};
  window.__stats = [];
  document.querySelector('omnilive-avatar').addEventListener('stats', (event) => {
    window.__stats.push({...event.detail, t: ctx.currentTime});
  });
  for (const [name, track] of [['mic', mic], ['voice', voice]]) {
    const source = ctx.createMediaStreamSource(new MediaStream([track]));
    const tap = ctx.createScriptProcessor(1024, 1, 1);
    tap.onaudioprocess = (event) => {
      const samples = event.inputBuffer.getChannelData(0);
      let sum = 0;
      for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
      window.__levels[name].push([event.playbackTime, Math.sqrt(sum / samples.length)]);
    };
    source.connect(tap);
    tap.connect(mute);
  }
  return ctx.sampleRate;
}
"""


# The receiving side's own share: the jitter buffers' mean delay per kind (WebRTC stats, ms).
JITTER_BUFFERS = """
async () => {
  const out = {};
  (await document.querySelector('omnilive-avatar').client.pc.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp' && r.jitterBufferEmittedCount) {
      out[r.kind] = 1000 * r.jitterBufferDelay / r.jitterBufferEmittedCount;
    }
  });
  return out;
}
"""


def delay_s(mic: np.ndarray, voice: np.ndarray, step_s: float) -> tuple[float, float]:
    """The lag (s) at which the voice's log envelope best matches the microphone's, and that correlation."""
    a, b = np.log(mic + 1e-4), np.log(voice + 1e-4)
    best, best_lag = -1.0, 0
    for lag in range(int(MAX_LAG_S / step_s)):
        x, y = a[: len(a) - lag], b[lag:]
        n = min(len(x), len(y))
        if n < 50 or x[:n].std() == 0 or y[:n].std() == 0:
            continue
        corr = float(np.corrcoef(x[:n], y[:n])[0, 1])
        if corr > best:
            best, best_lag = corr, lag
    return best_lag * step_s, best


def measure(levels: dict, stats: list[dict], window_s: float) -> dict:
    """Per-window delays, their median, p95 and trend (s per minute) from the recorded envelopes; beside each
    window, the server's playout delay over it (max of its stats events)."""
    mic, voice = np.asarray(levels["mic"]), np.asarray(levels["voice"])
    step_s = 1024 / levels["rate"]
    start, end = max(mic[0, 0], voice[0, 0]), min(mic[-1, 0], voice[-1, 0])
    grid = np.arange(start, end, step_s)  # both envelopes on one time grid
    mic_env, voice_env = np.interp(grid, mic[:, 0], mic[:, 1]), np.interp(grid, voice[:, 0], voice[:, 1])
    per_window = int(window_s / step_s)
    rows = []
    for first in range(0, len(grid) - per_window - int(MAX_LAG_S / step_s), per_window):
        lag, corr = delay_s(mic_env[first:first + per_window + int(MAX_LAG_S / step_s)],
                            voice_env[first:first + per_window + int(MAX_LAG_S / step_s)], step_s)
        t0 = float(grid[first])
        playout = [e["playout_delay_ms"] for e in stats if t0 <= e["t"] < t0 + window_s]
        rows.append({"t_s": round(t0 - start, 1), "delay_ms": round(1000 * lag, 1), "corr": round(corr, 3),
                     "playout_delay_ms_max": max(playout, default=None)})
    good = [row for row in rows if row["corr"] > 0.5]
    delays = np.array([row["delay_ms"] for row in good])
    trend = float(np.polyfit([row["t_s"] for row in good], delays, 1)[0] * 60) if len(good) > 2 else float("nan")
    return {"windows": len(rows), "matched_windows": len(good),
            "delay_ms_median": round(float(np.median(delays)), 1) if len(delays) else None,
            "delay_ms_p95": round(float(np.percentile(delays, 95)), 1) if len(delays) else None,
            "trend_ms_per_min": round(trend, 1), "per_window": rows}


def server_share(stats: list[dict]) -> dict:
    """The server's own figures over the run (medians of its per-second stats events): latency (audio fed -> frame
    sent), playout delay, the microphone audio's wait before it is fed, and the engine's stages."""
    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(float(np.median(present)), 1) if present else None

    stages = {name: median([s.get("stages", {}).get(name, {}).get("p50_ms") for s in stats])
              for name in ("queue", "sample", "decode", "buffer", "late")}
    return {"events": len(stats), "latency_ms_p50": median([s.get("latency_ms_p50") for s in stats]),
            "latency_ms_p95": median([s.get("latency_ms_p95") for s in stats]),
            "playout_delay_ms_median": median([s.get("playout_delay_ms") for s in stats]),
            "playout_delay_ms_max": max((s.get("playout_delay_ms") or 0.0 for s in stats), default=None),
            "input_wait_ms_p50": median([s.get("input_wait_ms", {}).get("p50_ms") for s in stats]),
            "input_wait_ms_p95": median([s.get("input_wait_ms", {}).get("p95_ms") for s in stats]),
            "stages_p50_ms": stages}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="how long to listen after connecting")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per delay measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    speech = with_silences(human_speech(RATE), RATE, LEAD_S, TAIL_S)
    with tempfile.TemporaryDirectory() as tmp:
        wav = write_wav(Path(tmp) / "human.wav", speech)
        with demo_tab(Path(tmp), wav) as (tab, server):
            tab.page.goto(server.url + "/")
            tab.page.click("#start")
            tab.page.wait_for_function("document.body.dataset.status === 'connected'", timeout=30000)
            tab.page.evaluate(RECORDER)
            time.sleep(args.seconds)
            levels = tab.page.evaluate("window.__levels")
            stats = tab.page.evaluate("window.__stats")
            buffers = tab.page.evaluate(JITTER_BUFFERS)
    result = {"seconds": args.seconds, "window_s": args.window, **measure(levels, stats, args.window),
              "jitter_buffer_ms": {kind: round(ms, 1) for kind, ms in buffers.items()},
              "server": server_share(stats)}
    summary = {key: value for key, value in result.items() if key != "per_window"}
    logger.info("microphone -> avatar voice: %s", summary)
    sys.stdout.write(json.dumps(result if args.json else summary, indent=None if args.json else 2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
