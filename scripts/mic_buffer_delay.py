"""How long the server's microphone audio waits in aiortc's receiver before it is decoded: two aiortc peers on
loopback, a microphone track (20 ms Opus packets) sent to a receiver with aiortc's own audio jitter buffer or the
server's live one (avatar_server.aiortc_adapter.use_live_audio_buffer); per decoded frame, the time from its RTP
packet's arrival (tapped before the buffer) to the frame reaching the track's consumer. Modes alternate per round.

    .venv/bin/python scripts/mic_buffer_delay.py --rounds 2 --seconds 10 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import numpy as np
from aiortc import RTCRtpReceiver

from avatar_server.aiortc_adapter import tap_rtp, use_live_audio_buffer
from avatar_server.testing import microphone_pair

WARMUP_FRAMES = 25  # the first half second (connection start) left out


async def measure(mode: str, seconds: float, reorder: int) -> dict[str, float | str | int]:
    arrivals: dict[int, float] = {}  # RTP timestamp -> when its packet arrived

    def arrived(timestamp: int) -> None:
        arrivals.setdefault(timestamp, time.monotonic())

    def configure(rtp_receiver: RTCRtpReceiver) -> None:
        if mode == "live":
            use_live_audio_buffer(rtp_receiver, reorder)
        tap_rtp(rtp_receiver, arrived)

    sender, receiver, track = await microphone_pair(configure)
    waits: list[float] = []
    first: int | None = None
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            frame = await track.recv()
            now = time.monotonic()
            if first is None:
                first = min(arrivals)  # pts count from the first packet's RTP timestamp
            when = arrivals.get(first + (frame.pts or 0))
            if when is not None:
                waits.append(1000 * (now - when))
    finally:
        await sender.close()
        await receiver.close()
    kept = np.array(waits[WARMUP_FRAMES:])
    return {"mode": mode, "frames": int(kept.size), "p50_ms": round(float(np.median(kept)), 1),
            "p95_ms": round(float(np.percentile(kept, 95)), 1), "load_1m": os.getloadavg()[0]}


async def run(rounds: int, seconds: float, reorder: int) -> list[dict[str, float | str | int]]:
    results = []
    for _ in range(rounds):
        for mode in ("aiortc", "live"):
            results.append(await measure(mode, seconds, reorder))
            print(json.dumps(results[-1]), file=sys.stderr)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="per mode and round")
    parser.add_argument("--reorder", type=int, default=2, help="the live buffer's media.mic_reorder_packets")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    args = parser.parse_args()
    results = asyncio.run(run(args.rounds, args.seconds, args.reorder))
    sys.stdout.write(json.dumps(results, indent=None if args.json else 2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
