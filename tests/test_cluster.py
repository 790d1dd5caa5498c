"""The Ray cluster front: placement units, its settings, and one scenario on a local Ray cluster with two CPU
workers running the deterministic test generator (docs/cluster.md)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from avatar_server.cluster.placement import Load, Placement
from avatar_server.cluster.settings import DEFAULT_CLUSTER_CONFIG, ClusterSettings, load_cluster_settings
from avatar_server.problems import Problem
from model.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
AVATAR = ROOT / "avatar_server" / "assets" / "default_avatar.png"


#################################################################################
#                                   Placement                                   #
#################################################################################


def loads(*capacities: int) -> list[Load]:
    return [Load(f"w{i}", capacity=c, up=True, up_since=float(i)) for i, c in enumerate(capacities)]


def test_least_loaded_first_and_ties_to_the_worker_up_longest() -> None:
    pool = loads(2, 2, 3)
    placement = Placement(pool, retry_after_s=7)
    assert placement.reserve().name == "w2"  # 3 free
    assert placement.reserve().name == "w0"  # 2, 2, 2 free: w0 has been up longest
    assert placement.reserve().name == "w1"  # 1, 2, 2 free: w1 is up longer than w2
    assert placement.reserve().name == "w2"
    assert [load.free for load in pool] == [1, 1, 1]


def test_full_pool_is_503_with_retry_after_and_down_or_draining_workers_take_nothing() -> None:
    pool = loads(1, 1, 1)
    pool[1].up, pool[2].draining = False, True
    placement = Placement(pool, retry_after_s=7)
    Placement.commit(placement.reserve(), "s_a")
    with pytest.raises(Problem) as refused:
        placement.reserve()
    assert (refused.value.status, refused.value.code, refused.value.headers) == (503, "capacity", {"Retry-After": "7"})
    assert placement.owner("s_a") is pool[0] and placement.capacity == 1 and placement.sessions == 1


async def test_admission_is_exact_under_concurrent_requests() -> None:
    """200 concurrent creations against 7 slots: exactly 7 get one, never two on the same slot."""
    pool = loads(3, 4)
    placement = Placement(pool, retry_after_s=1)
    admitted: list[str] = []

    async def create(i: int) -> None:
        await asyncio.sleep(0)
        try:
            load = placement.reserve()
        except Problem:
            return
        await asyncio.sleep(0.001 * (i % 5))  # the worker answers later
        Placement.commit(load, f"s_{i}")
        admitted.append(load.name)

    await asyncio.gather(*(create(i) for i in range(200)))
    assert sorted(admitted) == ["w0"] * 3 + ["w1"] * 4
    assert [load.reserved for load in pool] == [0, 0]


def test_reconcile_keeps_sessions_recorded_after_the_status_was_asked() -> None:
    load = Load("w0", capacity=4, up=True, sessions={"s_old": 1.0, "s_gone": 1.0, "s_new": 5.0})
    load.reconcile(["s_old", "s_other"], draining=False, asked_at=3.0)
    assert set(load.sessions) == {"s_old", "s_new", "s_other"}


def test_cluster_yaml_lists_every_default_and_sets_none() -> None:
    text = DEFAULT_CLUSTER_CONFIG.read_text()
    uncommented = "\n".join(line[2:] if re.match(r"# *[a-z_]+:(\s|$)", line) else line for line in text.splitlines())
    assert yaml.safe_load(uncommented) == ClusterSettings().model_dump(mode="json"), "cluster.yaml disagrees"
    assert load_cluster_settings(environ={}) == ClusterSettings()


def test_cluster_settings_file_environment_and_overrides(tmp_path: Path) -> None:
    settings = load_cluster_settings(environ={})
    assert (settings.address, settings.workers, settings.worker.num_gpus) == ("auto", 2, 1.0)
    env = {"OMNILIVE_CLUSTER__WORKERS": "5", "OMNILIVE_CLUSTER__WORKER__NUM_GPUS": "0.5"}
    settings = load_cluster_settings(environ=env, address="ray://head:10001")
    assert (settings.address, settings.workers, settings.worker.num_gpus, settings.worker.num_cpus) == \
        ("ray://head:10001", 5, 0.5, 1.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers: 0\nworker: {gpus: 1}\n")
    with pytest.raises(InputError, match=r"workers(.|\n)*worker\.gpus"):
        load_cluster_settings(bad, environ={})


#################################################################################
#                          A local Ray cluster, 2 workers                       #
#################################################################################


async def create(http: httpx.AsyncClient, url: str, avatar: str) -> tuple[Any, httpx.Response]:
    from avatar_server.peer import AvatarPeer

    peer = AvatarPeer(url, keep_images=False, options={"avatar": avatar})
    return peer, await peer.connect(http)


def fps(peer: Any, start: float, seconds: float) -> float:
    """Video frames received per second in [start, start + seconds] (arrival clock)."""
    return sum(start <= t < start + seconds for t, _, _ in peer.received.video) / seconds


async def events_until_closed(socket: Any, timeout: float) -> tuple[list[dict[str, Any]], int | None]:
    """Every event up to the socket's close, and its close code."""
    events: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(timeout):
            while True:
                events.append(json.loads(await socket.recv()))
    return events, socket.close_code


def front_setup_ms(metrics: str) -> float:
    """The mean of omnilive_front_setup_seconds, in ms."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {sample.name: sample.value for family in text_string_to_metric_families(metrics)
              for sample in family.samples if sample.name.startswith("omnilive_front_setup_seconds")}
    return 1000 * values["omnilive_front_setup_seconds_sum"] / values["omnilive_front_setup_seconds_count"]


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_two_workers_place_route_survive_a_killed_worker_and_drain() -> None:
    from avatar_server.cluster.front import create_front
    from avatar_server.settings import load_settings
    from avatar_server.testing import TEST_CONFIG, fake_pipeline, running_server

    settings = load_settings(TEST_CONFIG, environ={}, sessions={"max_sessions": 1, "connect_timeout_s": 20})
    cluster = load_cluster_settings(environ={}, address="local", local_cpus=2, workers=2,
                                    worker={"num_gpus": 0, "num_cpus": 1}, health_interval_s=0.5)
    app = create_front(settings, cluster, lambda _settings: fake_pipeline())
    pool = app.state.server.pool
    peers: list[Any] = []
    async with running_server(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        await pool.wait_up(2, timeout_s=240)
        ws_url = url.replace("http", "ws", 1)

        # An avatar uploaded to the front is usable on both workers.
        upload = await http.post("/v1/avatars?name=pool", content=AVATAR.read_bytes(),
                                 headers={"Content-Type": "image/png"})
        assert upload.status_code == 201, upload.text
        avatar = upload.json()["id"]

        # Two sessions spread over both workers; a third is refused like a full single server.
        (a, created_a), (b, created_b) = [await create(http, url, avatar) for _ in range(2)]
        peers += [a, b]
        assert (created_a.status_code, created_b.status_code) == (201, 201), created_b.text
        id_a, id_b = created_a.json()["session_id"], created_b.json()["session_id"]
        owner_a, owner_b = pool.owner(id_a), pool.owner(id_b)
        assert {owner_a.name, owner_b.name} == {"w0", "w1"}
        c, refused = await create(http, url, avatar)
        peers.append(c)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "3", refused.text
        assert (await http.get("/readyz")).status_code == 503
        await asyncio.gather(a.wait_connected(30), b.wait_connected(30))

        # A session's socket reaches its worker: its events arrive through the front.
        events_a = await ws_connect(ws_url + created_a.json()["events_url"])
        first = json.loads(await asyncio.wait_for(events_a.recv(), 10))
        assert first["type"] in ("state", "stats")
        assert id_a in (await owner_a.actor.status.remote()).sessions

        # Killing A's worker process ends A with worker_lost (close 4404) while B keeps its frame rate.
        old_pid = owner_a.status.pid
        os.kill(old_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        events, code = await events_until_closed(events_a, timeout=30)
        assert code == 4404 and {"type": "error", "code": "worker_lost"}.items() <= events[-1].items(), events
        await asyncio.sleep(max(0.0, killed_at + 5.3 - time.monotonic()))
        b_fps = fps(b, killed_at, 5.0)  # the kill, the restart of that worker's process, its start-up
        assert b_fps >= 24, f"the other worker's session fell to {b_fps:.1f} fps (load {os.getloadavg()})"
        assert (await http.get(f"/v1/sessions/{id_a}")).status_code == 404

        # DELETE reaches B's worker; the next session goes to the survivor.
        assert (await http.delete(f"/v1/sessions/{id_b}")).status_code == 204
        assert id_b not in (await owner_b.actor.status.remote()).sessions
        d, created_d = await create(http, url, avatar)
        peers.append(d)
        assert created_d.status_code == 201, created_d.text
        assert pool.owner(created_d.json()["session_id"]) is owner_b

        # Ray restarts the killed worker; it comes back with the avatar and takes sessions again.
        await wait_for(lambda: owner_a.load.up and owner_a.status.pid != old_pid, 180, "the killed worker is back")
        e, created_e = await create(http, url, avatar)
        peers.append(e)
        assert created_e.status_code == 201, created_e.text
        assert pool.owner(created_e.json()["session_id"]) is owner_a
        await e.wait_connected(30)
        await wait_for(lambda: len(e.received.video) > 10, 20, "frames from the restarted worker")
        metrics = (await http.get("/metrics")).text
        assert "omnilive_workers_lost_total 1.0" in metrics
        assert f'omnilive_worker_restarts_total{{worker="{owner_a.name}"}} 1.0' in metrics
        assert 'omnilive_sessions_active 2.0' in metrics and 'omnilive_sessions_max 2.0' in metrics
        assert front_setup_ms(metrics) <= 20, "the front's own share of a session setup (placement, forwarding)"

        # Draining: no new session on the drained worker, its own session goes on.
        drained = await http.post(f"/v1/workers/{owner_b.name}/drain")
        assert drained.status_code == 200 and drained.json()["draining"] is True
        f, refused = await create(http, url, avatar)
        peers.append(f)
        assert refused.status_code == 503
        assert (await http.get(f"/v1/sessions/{created_d.json()['session_id']}")).status_code == 200
        assert (await http.post(f"/v1/workers/{owner_b.name}/resume")).json()["draining"] is False
        for peer in peers:
            await peer.close()


async def test_a_status_asked_before_a_resume_does_not_undo_it() -> None:
    """The health check asks a draining worker's status, the operator resumes it, then the stale answer
    arrives: the worker stays resumed (the answer to `resume` once said `draining: true`)."""
    from avatar_server.cluster.pool import Worker, WorkerPool
    from avatar_server.cluster.worker import WorkerStatus
    from avatar_server.settings import load_settings
    from avatar_server.testing import TEST_CONFIG

    asked, answer = asyncio.Event(), asyncio.get_running_loop().create_future()

    def status(draining: bool) -> WorkerStatus:
        return WorkerStatus(incarnation="i", pid=1, url="http://w0", model="tiny", ready=True, draining=draining,
                            max_sessions=1, sessions=(), generated_fps=0.0, latency_ms_p50=None)

    class Method:
        def __init__(self, call: Any) -> None:
            self.remote = call

    class Actor:
        def __init__(self) -> None:
            self.draining = True
            self.status, self.drain = Method(self.read_status), Method(self.set_draining)

        async def read_status(self) -> WorkerStatus:
            seen = self.draining
            asked.set()
            await answer  # the answer is on its way while the operator resumes the worker
            return status(seen)

        async def set_draining(self, draining: bool) -> WorkerStatus:
            self.draining = draining
            return status(draining)

    pool = WorkerPool(load_settings(TEST_CONFIG, environ={}), load_cluster_settings(DEFAULT_CLUSTER_CONFIG, environ={}),
                      lambda _settings: None)
    worker = Worker(Load("w0", draining=True), Actor(), status=status(True), incarnation="i")
    check = asyncio.create_task(pool._check(worker))
    await asyncio.wait_for(asked.wait(), 5)
    await pool.drain(worker, False)
    answer.set_result(None)
    await check
    assert worker.load.draining is False
