"""`omnilive bench stream`: streaming speed (cached sampler + VAE decode) and equality with the naive path."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import torch

from avatar_server.settings import ModelSettings
from model.errors import InputError
from model.pipeline import FALLBACK_MOUTH, AvatarPipeline, AvatarStream, LatentChunk, StreamOptions
from model.vae import DECODE_PRECISIONS
from omnilive_cli.render import load_pipeline

logger = logging.getLogger(__name__)

MIN_COMPARED_CHUNKS = 5  # the correctness contract is checked over at least this many chunks
RANDOM_INIT_NOTE = "random init: untrained weights, valid for speed and cache-equality only, not for quality"
GUIDE_NOTE = ("the DiT returns its guide (output layer zero): no chunk runs it, so the cached and naive paths are "
              "the same; measure the cache with --random-init")


def register(targets: argparse._SubParsersAction) -> None:
    """Add `bench stream`."""
    parser = targets.add_parser(
        "stream", help="speed of live generation and max difference to the naive (uncached) path",
        description="Measure chunked streaming generation: cached sampler + VAE decode per chunk, the naive "
                    "re-computation for comparison (the two take turns chunk by chunk), and the largest latent "
                    "difference between the two.",
    )
    parser.add_argument("--config", default="tiny", help="model config (tiny, base, large or a .yaml) for --random-init")
    parser.add_argument("--random-init", action="store_true", help="untrained weights (speed measurement only)")
    parser.add_argument("--checkpoint", help="checkpoint folder (default: weights/tiny when it exists)")
    parser.add_argument("--chunks", type=int, default=20, help="timed chunks per path (>= 1)")
    parser.add_argument("--sessions", type=int, default=1, help="streams batched in every generate call")
    parser.add_argument("--steps", type=int, help="Euler steps (default: the model config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--decode-precision", choices=DECODE_PRECISIONS, default=ModelSettings().decode_precision,
                        help="the VAE decode's arithmetic (default: the server's, model.decode_precision)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


#################################################################################
#                                  Measurement                                  #
#################################################################################

def bench_audio(seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """Deterministic speech-like audio: a gliding harmonic voice under a syllable-rate envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.7 * t)) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t + seed))
    return (0.2 * voice * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def bench_image(height: int, width: int, seed: int) -> np.ndarray:
    """Deterministic uint8 [H, W, 3] reference (noise; content does not change the cost)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def open_streams(pipe: AvatarPipeline, sessions: int, chunks: int, steps: int | None,
                 seed: int) -> tuple[list[AvatarStream], float]:
    """`sessions` streams with audio for `chunks` chunks, and the mean ms to open one."""
    cfg = pipe.config
    seconds = ((chunks + 1) * cfg.chunk_frames + cfg.lookahead_frames) / cfg.fps
    t0 = time.perf_counter()
    streams = []
    for i in range(sessions):
        # noise has no mouth to find: a guide model draws it at the fallback place (the cost is the same)
        reference = pipe.encode_reference(bench_image(cfg.height, cfg.width, seed + i),
                                          mouth=FALLBACK_MOUTH if pipe.guided else None)
        stream = pipe.open_stream(reference, StreamOptions(seed=seed + i, steps=steps))
        stream.push_audio(bench_audio(seconds, cfg.sample_rate, seed + i))
        streams.append(stream)
    _sync(pipe.device)
    return streams, (time.perf_counter() - t0) * 1e3 / sessions


def time_chunk(pipe: AvatarPipeline, streams: list[AvatarStream], naive: bool,
               timings: dict[str, list[float]]) -> list[LatentChunk]:
    """Sample and decode the next chunk of every stream; appends its ms to `timings`."""
    c0, t0 = time.process_time(), time.perf_counter()
    latents = pipe.sample(streams, naive=naive)
    _sync(pipe.device)
    t1 = time.perf_counter()
    pipe.decode(latents)
    _sync(pipe.device)
    t2, c2 = time.perf_counter(), time.process_time()
    if len(latents) != len(streams):
        raise RuntimeError(f"only {len(latents)} of {len(streams)} streams produced a chunk")
    timings["sampler"].append((t1 - t0) * 1e3)
    timings["decode"].append((t2 - t1) * 1e3)
    timings["total"].append((t2 - t0) * 1e3)
    timings["cpu"].append((c2 - c0) * 1e3)
    return latents


def run_paths(pipe: AvatarPipeline, sessions: int, chunks: int, steps: int | None,
              seed: int) -> tuple[dict[bool, list[list[LatentChunk]]], dict[bool, dict[str, list[float]]], float]:
    """The cached (False) and naive (True) paths on streams of the same seeds, chunk by chunk in turn and
    each first every other chunk, so a change in the machine's load falls on both alike; returns their
    chunks, per-chunk timings (ms) and the cached streams' open time."""
    cached_streams, open_ms = open_streams(pipe, sessions, chunks, steps, seed)
    streams = {False: cached_streams, True: open_streams(pipe, sessions, chunks, steps, seed)[0]}
    results: dict[bool, list[list[LatentChunk]]] = {False: [], True: []}
    timings: dict[bool, dict[str, list[float]]] = {
        naive: {"total": [], "sampler": [], "decode": [], "cpu": []} for naive in (False, True)}
    with torch.inference_mode():
        for i in range(chunks):
            for naive in ((False, True) if i % 2 == 0 else (True, False)):
                results[naive].append(time_chunk(pipe, streams[naive], naive, timings[naive]))
    for stream in streams[False] + streams[True]:
        stream.close()
    return results, timings, open_ms


def _p(values: list[float], q: float) -> float:
    """Percentile q (0-100) of the steady-state values (the first chunk is a warm-up when there are more)."""
    steady = values[1:] if len(values) > 1 else values
    return float(np.percentile(steady, q))


def measure(pipe: AvatarPipeline, sessions: int, chunks: int, steps: int | None, seed: int) -> dict:
    """The bench figures as one dict."""
    cfg = pipe.config
    steps_used = steps or cfg.steps
    compared = max(chunks, MIN_COMPARED_CHUNKS)
    results, timings, open_ms = run_paths(pipe, sessions, compared, steps, seed)
    timing, naive_timing = timings[False], timings[True]
    diff = max(float((a.latents - b.latents).abs().max())
               for chunk_a, chunk_b in zip(results[False], results[True]) for a, b in zip(chunk_a, chunk_b))
    ms = _p(timing["total"], 50)
    naive_ms = _p(naive_timing["total"], 50)
    chunk_seconds = cfg.chunk_frames / cfg.fps
    params = pipe.num_parameters
    return {
        "config": pipe.model_config.name,
        "device": str(pipe.device) if pipe.device.type != "cuda" else torch.cuda.get_device_name(pipe.device),
        "dtype": str(pipe.dit.dtype).removeprefix("torch."),
        "vae_decode_bfloat16": pipe.vae.decode_bfloat16,
        "torch_threads": torch.get_num_threads(),
        "height": cfg.height,
        "width": cfg.width,
        "fps_target": cfg.fps,
        "chunk_frames": cfg.chunk_frames,
        "context_frames": cfg.context_frames,
        "steps": steps_used,
        "sessions": sessions,
        "chunks": compared,
        "ms_per_chunk_p50": round(ms, 2),
        "ms_per_chunk_p90": round(_p(timing["total"], 90), 2),
        "sampler_ms_per_chunk_p50": round(_p(timing["sampler"], 50), 2),
        "vae_decode_ms_per_chunk_p50": round(_p(timing["decode"], 50), 2),
        "cpu_ms_per_chunk_p50": round(_p(timing["cpu"], 50), 2),
        "open_stream_ms": round(open_ms, 2),
        "rtf": round(sessions * chunk_seconds / (ms / 1e3), 3),
        "naive_ms_per_chunk_p50": round(naive_ms, 2),
        "naive_sampler_ms_per_chunk_p50": round(_p(naive_timing["sampler"], 50), 2),
        "cache_speedup": round(naive_ms / ms, 3),
        "sampler_cache_speedup": round(_p(naive_timing["sampler"], 50) / _p(timing["sampler"], 50), 3),
        "max_abs_diff_vs_naive": diff,
        "compared_chunks": compared,
        "dit_runs": not pipe.sampler.returns_guide,
        "params": {**params, "total": sum(params.values())},
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }


#################################################################################
#                                      CLI                                      #
#################################################################################

def run(args: argparse.Namespace) -> int:
    """Measure and print one JSON object (--json) or a short summary."""
    if args.chunks < 1:
        raise InputError(f"--chunks must be >= 1, got {args.chunks}")
    if args.sessions < 1:
        raise InputError(f"--sessions must be >= 1, got {args.sessions}")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args)
    pipe.set_decode_precision(args.decode_precision)
    result = measure(pipe, args.sessions, args.chunks, args.steps, args.seed)
    result["random_init"] = bool(args.random_init)
    if args.random_init:
        result["note"] = RANDOM_INIT_NOTE
    elif not result["dit_runs"]:
        result["note"] = GUIDE_NOTE
    result["rtf_definition"] = "generated frames per second (all sessions, VAE decode included) / fps_target"
    result["cpu_ms_definition"] = ("process CPU time per chunk (all threads); with --threads 1 it estimates "
                                   "the wall time on an idle core when the machine is shared")
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    sys.stdout.write(
        f"{result['config']} on {result['device']} ({result['torch_threads']} threads), "
        f"{result['sessions']} session(s), {result['chunk_frames']} frames/chunk, {result['steps']} steps\n"
        f"  cached: {result['ms_per_chunk_p50']:.1f} ms/chunk p50 (sampler {result['sampler_ms_per_chunk_p50']:.1f}"
        f" + VAE {result['vae_decode_ms_per_chunk_p50']:.1f}) -> RTF {result['rtf']:.2f}"
        f" ({'real time' if result['rtf'] >= 1 else 'slower than real time'})\n"
        f"  naive:  {result['naive_ms_per_chunk_p50']:.1f} ms/chunk p50 -> cache speedup {result['cache_speedup']:.2f}x"
        f" (sampler only {result['sampler_cache_speedup']:.2f}x)\n"
        f"  max |cached - naive| over {result['compared_chunks']} chunks: {result['max_abs_diff_vs_naive']:.2e}\n"
        + (f"  note: {result['note']}\n" if "note" in result else "")
    )
    return 0
