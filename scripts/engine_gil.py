"""Is the engine slower in the server because of the GIL? The generate loop beside a busy asyncio loop, in a thread
of the same process vs in a spawned child process (and alone, for reference), runs alternated.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/engine_gil.py --chunks 60 --rounds 3 --json

The busy loop stands in for the server's event loop (aiortc, pacing, stats): pure-Python bursts of `--burst-ms`
taking `--busy` of one core. Every chunk is paced at real time (one chunk per 80 ms, as in the server) and timed
as sample + decode; the figure per mode is the median of the per-chunk p50 over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import psutil

logger = logging.getLogger("engine_gil")
ROOT = Path(__file__).resolve().parent.parent


def generate_loop(chunks: int, threads: int) -> list[float]:
    """Load weights/tiny, open one stream on the default avatar, and time `chunks` real-time-paced chunks (ms)."""
    import torch
    from PIL import Image

    from model.pipeline import AvatarPipeline, StreamOptions

    torch.set_num_threads(threads)
    pipe = AvatarPipeline.from_pretrained(str(ROOT / "weights" / "tiny"), device="cpu")
    pipe.set_decode_precision("auto")
    image = np.asarray(Image.open(ROOT / "avatar_server" / "assets" / "default_avatar.png").convert("RGB"))
    stream = pipe.open_stream(pipe.encode_reference(image), StreamOptions())
    cfg = pipe.config
    chunk_s = cfg.chunk_frames / cfg.fps
    rng = np.random.default_rng(0)
    pcm = (0.1 * rng.standard_normal(int((chunks + 4) * chunk_s * cfg.sample_rate))).astype(np.float32)
    stream.push_audio(pcm, voiced=True)
    times = []
    with torch.inference_mode():
        for i in range(chunks + 2):  # two warm-up chunks
            started = time.perf_counter()
            pipe.decode(pipe.sample([stream]))
            took = time.perf_counter() - started
            if i >= 2:
                times.append(took * 1e3)
            time.sleep(max(0.0, chunk_s - took))
    stream.close()
    return times


def _child(chunks: int, threads: int, out: mp.Queue) -> None:
    out.put(generate_loop(chunks, threads))


async def busy_loop(stop: threading.Event, busy: float, burst_ms: float) -> int:
    """Pure-Python bursts on the event loop, `busy` of the time; returns how many bursts ran."""
    burst_s = burst_ms / 1e3
    bursts = 0
    while not stop.is_set():
        end = time.perf_counter() + burst_s
        x = 0
        while time.perf_counter() < end:
            x += sum(i * i for i in range(50))
        bursts += 1
        await asyncio.sleep(burst_s * (1 - busy) / busy)
    return bursts


async def run_mode(mode: str, chunks: int, threads: int, busy: float, burst_ms: float) -> list[float]:
    """One round: the generate loop in `mode` (thread, process, alone) while the event loop is busy (not when alone)."""
    stop = threading.Event()
    looper = None if mode == "alone" else asyncio.create_task(busy_loop(stop, busy, burst_ms))
    try:
        if mode == "process":
            ctx = mp.get_context("spawn")
            out: mp.Queue = ctx.Queue()
            child = ctx.Process(target=_child, args=(chunks, threads, out))
            child.start()
            times = await asyncio.to_thread(out.get)
            await asyncio.to_thread(child.join)
        else:
            times = await asyncio.to_thread(generate_loop, chunks, threads)
    finally:
        stop.set()
        if looper is not None:
            await looper
    return times


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    return psutil.cpu_times().user + psutil.cpu_times().system + psutil.cpu_times().nice


def _own_cpu_s() -> float:
    """CPU seconds of this process and its children (the spawned engine included)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total + me.cpu_times().children_user + me.cpu_times().children_system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="the engine's torch intra-op threads")
    parser.add_argument("--busy", type=float, default=0.25, help="share of one core the event loop keeps busy")
    parser.add_argument("--burst-ms", type=float, default=0.5)
    parser.add_argument("--modes", default="thread,process,alone")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    modes = args.modes.split(",")
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for round_ in range(args.rounds):
        for mode in modes:
            load = os.getloadavg()[0]
            busy_before, ours_before, started = _machine_busy_s(), _own_cpu_s(), time.monotonic()
            times = asyncio.run(run_mode(mode, args.chunks, args.threads, args.busy, args.burst_ms))
            others = (_machine_busy_s() - busy_before - (_own_cpu_s() - ours_before)) / (time.monotonic() - started)
            figure = {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
                      "load": load, "others_cores": others}
            runs[mode].append(figure)
            logger.info("round %d %-7s p50 %.1f ms, p95 %.1f ms (load %.2f, other processes %.2f cores)", round_,
                        mode, figure["p50_ms"], figure["p95_ms"], load, others)
    summary = {m: {"p50_ms": statistics.median(r["p50_ms"] for r in rs),
                   "p95_ms": statistics.median(r["p95_ms"] for r in rs), "runs": rs} for m, rs in runs.items()}
    if args.json:
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
