"""`omnilive bench serve`: N aiortc clients stream a WAV as their microphone to a live server.

Prints delivered fps per session (frames received, and freshly generated frames shown), latency
p50/p95 (audio arrival -> frame sent, from the server), first-frame time, each session's stage
p50/p95 (queue, sample, decode, buffer, late, encode: docs/server.md), the engine's cost model, server CPU
and RSS; `--find-capacity` searches the largest N where every session keeps >= 0.95 x the target fps and a
latency p95 within a conversation's budget (400 ms by default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import psutil

from model.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_WAV = Path("/usr/share/sounds/alsa/Front_Center.wav")
CAPACITY_FRACTION = 0.95
CAPACITY_LATENCY_P95_MS = 400.0  # a conversation's budget: beyond it the avatar lags its own voice noticeably
STARTUP_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 30.0
MIC_RATE = 16000


def register(targets: argparse._SubParsersAction) -> None:
    parser = targets.add_parser("serve", help="load-test the WebRTC server with N aiortc clients",
                                description="Start `omnilive serve` and N aiortc clients that stream a WAV as "
                                            "their microphone; report fps, latency, first frame, CPU and RSS.")
    parser.add_argument("--sessions", type=int, default=1, help="concurrent sessions (default 1)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after connecting before measuring")
    parser.add_argument("--wav", default=None, help=f"microphone audio, looped (default {DEFAULT_WAV})")
    parser.add_argument("--find-capacity", action="store_true",
                        help=f"search the largest N with every session >= {CAPACITY_FRACTION} x target fps and "
                             "latency p95 <= --max-latency-ms")
    parser.add_argument("--max-latency-ms", type=float, default=CAPACITY_LATENCY_P95_MS,
                        help=f"latency p95 a session may have and still count as served (default "
                             f"{CAPACITY_LATENCY_P95_MS:.0f})")
    parser.add_argument("--max-sessions", type=int, default=32, help="upper bound of the capacity search")
    parser.add_argument("--config", default=None, help="server settings YAML (default configs/server/default.yaml)")
    parser.add_argument("--weights", default=None, help="checkpoint folder (overrides model.weights)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (overrides model.device)")
    parser.add_argument("--generator", choices=("model", "fake"), default="model",
                        help="'fake': the deterministic test generator (measures serving alone, in-process)")
    parser.add_argument("--in-process", action="store_true", help="run the server in this process")
    parser.add_argument("--cluster", default=None, metavar="ADDRESS",
                        help="measure a cluster front (in this process) and its Ray workers: auto, ray://HEAD:10001 "
                             "or local; each worker admits the sessions asked for (docs/cluster.md)")
    parser.add_argument("--cluster-config", default=None, metavar="FILE",
                        help="pool settings YAML (default configs/server/cluster.yaml)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.sessions < 1 or args.seconds <= 0 or args.warmup < 0 or args.max_sessions < 1 or args.max_latency_ms <= 0:
        raise InputError("--sessions and --max-sessions must be >= 1, --seconds and --max-latency-ms > 0, "
                         "--warmup >= 0")
    mic = _load_mic(args.wav)
    result = asyncio.run(_bench(args, mic))
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        _print_human(result)
    return 0


def _load_mic(path: str | None) -> np.ndarray:
    """The WAV as float32 16 kHz mono; a speech-like tone pattern when no file is given or installed."""
    from model.media import load_audio

    if path is not None:
        return load_audio(path, MIC_RATE)
    if DEFAULT_WAV.is_file():
        return load_audio(DEFAULT_WAV, MIC_RATE)
    t = np.arange(MIC_RATE * 4) / MIC_RATE
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)


#################################################################################
#                                    Server                                     #
#################################################################################


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def _server(args: argparse.Namespace, max_sessions: int) -> AsyncIterator[tuple[str, psutil.Process]]:
    """The server under test, admitting `max_sessions`; yields (base URL, its process)."""
    if args.cluster is not None:
        async with _cluster(args, max_sessions) as url:
            yield url, psutil.Process()
        return
    if args.in_process or args.generator == "fake":
        from avatar_server.app import create_app
        from avatar_server.runtime import load_pipeline
        from avatar_server.settings import load_settings
        from avatar_server.testing import fake_pipeline, running_server

        model = {k: v for k, v in (("weights", args.weights), ("device", args.device)) if v is not None}
        settings = load_settings(args.config, sessions={"max_sessions": max_sessions}, **({"model": model} if model else {}))
        handle = fake_pipeline() if args.generator == "fake" else load_pipeline(settings)
        async with running_server(create_app(settings, handle)) as url:
            yield url, psutil.Process()
        return
    port = _free_port()
    command = [sys.executable, "-m", "omnilive_cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    for flag, value in (("--config", args.config), ("--weights", args.weights), ("--device", args.device)):
        if value is not None:
            command += [flag, value]
    env = {**os.environ, "OMNILIVE_SESSIONS__MAX_SESSIONS": str(max_sessions)}
    with tempfile.NamedTemporaryFile("w+", prefix="omnilive-bench-", suffix=".log") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            await _wait_ready(url, process, log)
            yield url, psutil.Process(process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def fake_handle(settings: Any) -> Any:
    """A cluster worker's model for `--generator fake` (importable, so Ray ships it to workers by name)."""
    from avatar_server.testing import fake_pipeline

    return fake_pipeline()


@contextlib.asynccontextmanager
async def _cluster(args: argparse.Namespace, max_sessions: int) -> AsyncIterator[str]:
    """A cluster front in this process, its workers on Ray, each admitting `max_sessions`; yields its URL once
    every worker is up."""
    from avatar_server.cluster.front import create_front
    from avatar_server.cluster.settings import load_cluster_settings
    from avatar_server.runtime import load_pipeline
    from avatar_server.settings import load_settings
    from avatar_server.testing import running_server

    model = {k: v for k, v in (("weights", args.weights), ("device", args.device)) if v is not None}
    settings = load_settings(args.config, sessions={"max_sessions": max_sessions}, **({"model": model} if model else {}))
    cluster = load_cluster_settings(args.cluster_config, address=args.cluster)
    app = create_front(settings, cluster, fake_handle if args.generator == "fake" else load_pipeline)
    async with running_server(app) as url:
        await app.state.server.pool.wait_up(cluster.workers, cluster.start_timeout_s)
        yield url


async def _wait_ready(url: str, process: subprocess.Popen, log: Any) -> None:
    import httpx

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log.seek(0)
                raise InputError(f"the server exited during startup:\n{log.read()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.5)
    raise InputError(f"the server was not ready within {STARTUP_TIMEOUT_S:.0f} s")


#################################################################################
#                                    Clients                                    #
#################################################################################


def session_served(row: dict[str, Any], floor_fps: float, max_latency_ms: float) -> bool:
    """A session counts as served: received and freshly generated fps >= floor_fps, latency p95 measured and
    <= max_latency_ms."""
    p95 = row["latency_ms_p95"]
    return row["fps"] >= floor_fps and row["generated_fps"] >= floor_fps and p95 is not None and p95 <= max_latency_ms


async def _trial(url: str, server: psutil.Process, sessions: int, seconds: float, warmup: float,
                 mic: np.ndarray, max_latency_ms: float) -> dict[str, Any]:
    """One run with `sessions` clients; per-session and overall figures."""
    import httpx

    from avatar_server.peer import AvatarPeer

    peers = [AvatarPeer(url, mic=mic, loop_mic=True, keep_images=False) for _ in range(sessions)]
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        try:
            responses = await asyncio.gather(*(peer.connect(http) for peer in peers))
            setup_ms = sorted(r.elapsed.total_seconds() * 1000 for r in responses)
            refused = [r.status_code for r in responses if r.status_code != 201]
            if refused:
                return {"sessions": sessions, "error": f"sessions refused: HTTP {refused}", "ok": False}
            await asyncio.gather(*(peer.wait_connected(CONNECT_TIMEOUT_S) for peer in peers))
            await asyncio.sleep(warmup)
            before = await _server_stats(http, peers)
            received = [len(p.received.video) for p in peers]
            cpu, client_cpu, started = server.cpu_times(), psutil.Process().cpu_times(), time.monotonic()
            await asyncio.sleep(seconds)
            elapsed = time.monotonic() - started
            cpu_after, client_after = server.cpu_times(), psutil.Process().cpu_times()
            after = await _server_stats(http, peers)
            samples = await _metric_samples(http)
        finally:
            for peer in peers:
                if peer.session:
                    with contextlib.suppress(httpx.HTTPError):
                        await http.delete(f"/v1/sessions/{peer.session['session_id']}")
                await peer.close()
    rows = []
    for peer, count, first, last in zip(peers, received, before, after):
        stats = last["stats"]
        rows.append({
            "fps": round((len(peer.received.video) - count) / elapsed, 2),
            "generated_fps": round((last["frames_generated_sent"] - first["frames_generated_sent"]) / elapsed, 2),
            "first_frame_s": None if peer.first_frame_s is None else round(peer.first_frame_s, 3),
            "first_generated_frame_s": last["first_frame_s"],
            "latency_ms_p50": stats["latency_ms_p50"], "latency_ms_p95": stats["latency_ms_p95"],
            "held_frames": stats["held_frames"] - first["stats"]["held_frames"],
            "dropped_frames": stats["dropped_frames"] - first["stats"]["dropped_frames"],
            "steps": stats["steps"], "playout_delay_ms": stats["playout_delay_ms"],
            "stages": stats.get("stages"), "input_wait_ms": stats.get("input_wait_ms"),
            "input_dropped_ms": stats.get("input_dropped_ms"), "input_packets": stats.get("input_packets"),
        })
    target = after[0]["stats"]["target_fps"]
    p50s = [r["latency_ms_p50"] for r in rows if r["latency_ms_p50"] is not None]
    p95s = [r["latency_ms_p95"] for r in rows if r["latency_ms_p95"] is not None]
    floor = CAPACITY_FRACTION * target
    return {
        "sessions": sessions, "seconds": round(elapsed, 2), "target_fps": target,
        "fps_min": min(r["fps"] for r in rows), "generated_fps_min": min(r["generated_fps"] for r in rows),
        "generated_fps_mean": round(float(np.mean([r["generated_fps"] for r in rows])), 2),
        "latency_ms_p50": float(np.median(p50s)) if p50s else None,
        "latency_ms_p95": max(p95s) if p95s else None,
        "first_generated_frame_s_max": max((r["first_generated_frame_s"] or 0.0) for r in rows),
        "server_cpu_percent": round(100 * _cpu_seconds(cpu, cpu_after) / elapsed, 1),
        "client_cpu_percent": round(100 * _cpu_seconds(client_cpu, client_after) / elapsed, 1),
        "server_rss_mb": round(server.memory_info().rss / 2**20, 1),
        "setup_ms_p50": round(setup_ms[len(setup_ms) // 2], 1), "setup_ms_max": round(setup_ms[-1], 1),
        "front_setup_ms_mean": _front_setup_ms(samples),
        "ok": all(session_served(r, floor, max_latency_ms) for r in rows),
        "cost_model": _cost_model(samples),
        "per_session": rows,
    }


async def _metric_samples(http: Any) -> list[Any]:
    """Every sample of the server's /metrics (empty when unreadable)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        response = await http.get("/metrics")
    except httpx.HTTPError:
        return []
    if response.status_code != 200:
        return []
    return [sample for family in text_string_to_metric_families(response.text) for sample in family.samples]


def _cost_model(samples: list[Any]) -> dict[str, dict[str, float]] | None:
    """The engine's cost model: {batch size: {"fixed_ms", "per_step_ms"}}; None when the metrics lack it."""
    names = {"omnilive_engine_cost_fixed_seconds": "fixed_ms", "omnilive_engine_cost_step_seconds": "per_step_ms"}
    out: dict[str, dict[str, float]] = {}
    for sample in samples:
        if sample.name in names:
            out.setdefault(sample.labels["batch"], {})[names[sample.name]] = round(sample.value * 1000, 2)
    return out or None


def _front_setup_ms(samples: list[Any]) -> float | None:
    """A cluster front's mean own share of a session setup (placement, forwarding), over its life; None for a
    single server."""
    values = {s.name: s.value for s in samples if s.name.startswith("omnilive_front_setup_seconds_")}
    count = values.get("omnilive_front_setup_seconds_count")
    return round(1000 * values["omnilive_front_setup_seconds_sum"] / count, 3) if count else None


def _cpu_seconds(before: Any, after: Any) -> float:
    return (after.user - before.user) + (after.system - before.system)


async def _server_stats(http: Any, peers: list[Any]) -> list[dict[str, Any]]:
    out = []
    for peer in peers:
        response = await http.get(f"/v1/sessions/{peer.session['session_id']}")
        response.raise_for_status()
        out.append(response.json())
    return out


async def _bench(args: argparse.Namespace, mic: np.ndarray) -> dict[str, Any]:
    limit = args.max_sessions if args.find_capacity else args.sessions
    async with _server(args, limit) as (url, server):
        import httpx

        async with httpx.AsyncClient() as http:
            ready = (await http.get(f"{url}/readyz")).json()
        result: dict[str, Any] = {"model": ready.get("model"), "cpu_count": os.cpu_count(),
                                  "machine_load_1m": round(os.getloadavg()[0], 2)}
        if not args.find_capacity:
            result.update(await _trial(url, server, args.sessions, args.seconds, args.warmup, mic, args.max_latency_ms))
            return result
        trials: list[dict[str, Any]] = []

        async def ok(n: int) -> bool:
            trial = await _trial(url, server, n, args.seconds, args.warmup, mic, args.max_latency_ms)
            trials.append({k: v for k, v in trial.items() if k != "per_session"})
            return bool(trial["ok"])

        best, n = 0, 1
        while n <= args.max_sessions and await ok(n):  # doubling, then bisection
            best, n = n, n * 2
        low, high = best + 1, min(n, args.max_sessions + 1) - 1
        while low <= high:
            mid = (low + high) // 2
            if await ok(mid):
                best, low = mid, mid + 1
            else:
                high = mid - 1
        result.update({"capacity": best, "criterion": f"every session >= {CAPACITY_FRACTION} x target fps "
                                                      f"(received and freshly generated), latency p95 <= "
                                                      f"{args.max_latency_ms:g} ms", "trials": trials})
        return result


def _print_human(result: dict[str, Any]) -> None:
    lines = [f"model: {result.get('model')}"]
    if "capacity" in result:
        lines.append(f"capacity: {result['capacity']} sessions ({result['criterion']})")
        for trial in result["trials"]:
            lines.append(f"  {trial['sessions']:>3} sessions: fps min {trial.get('fps_min')}, generated fps min "
                         f"{trial.get('generated_fps_min')}, ok={trial['ok']}")
    else:
        lines.append(f"{result['sessions']} sessions, {result.get('seconds')} s: fps min {result.get('fps_min')}, "
                     f"generated fps min {result.get('generated_fps_min')}, latency p50 "
                     f"{result.get('latency_ms_p50')} ms / p95 {result.get('latency_ms_p95')} ms, server CPU "
                     f"{result.get('server_cpu_percent')} %, RSS {result.get('server_rss_mb')} MB")
        for i, row in enumerate(result.get("per_session", [])):
            stages = ", ".join(f"{name} {v['p50_ms']}/{v['p95_ms']}" for name, v in (row.get("stages") or {}).items())
            lines.append(f"  session {i}: steps {row['steps']}, stages p50/p95 ms: {stages or 'not reported'}")
        for batch, split in (result.get("cost_model") or {}).items():
            lines.append(f"  cost model, batch {batch}: {split.get('fixed_ms')} ms fixed + "
                         f"{split.get('per_step_ms')} ms per step")
    sys.stdout.write("\n".join(lines) + "\n")
