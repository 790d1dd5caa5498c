"""The workers' Ray actors: creation, health, restart detection, and the avatars every worker must hold.

Each worker has a watcher task that reads its status every `health_interval_s`. A status call that fails or
times out, or that comes back from a new incarnation (Ray restarted the process), means the worker's sessions
are gone: their sockets are closed with `worker_lost` and the worker takes no session until it serves again.
A restarted worker is started again and given every uploaded avatar before it is marked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import ray
from ray.exceptions import RayError

from avatar_server.cluster.placement import Load, Placement
from avatar_server.cluster.settings import LOCAL, ClusterSettings
from avatar_server.cluster.worker import AvatarResult, AvatarWorker, PipelineFactory, WorkerStatus
from avatar_server.settings import ServerSettings
from model.conditioning.mouth import MouthBox

logger = logging.getLogger(__name__)

WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}  # as `omnilive` sets it: spinning OpenMP threads starve a shared CPU


class Relay(Protocol):
    """An open socket relayed to a worker (avatar_server.cluster.proxy.SocketRelay)."""

    def worker_lost(self) -> None: ...


@dataclass
class Worker:
    """One actor and what the front knows of it."""

    load: Load
    actor: Any                                   # ray ActorHandle of AvatarWorker
    status: WorkerStatus | None = None           # last status read (None: never read)
    relays: set[Relay] = field(default_factory=set)
    incarnation: str | None = None               # the process the front last saw (WorkerStatus.incarnation)
    incarnations: int = 0                        # processes seen (1 + restarts)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.load.name

    @property
    def url(self) -> str | None:
        """Where its API serves, once started."""
        return None if self.status is None else self.status.url


def with_pool_secret(settings: ServerSettings) -> ServerSettings:
    """The settings with one token secret for the whole pool (a random one when unset), so a token minted by
    any worker works on every worker and on the front."""
    if settings.auth.token_secret is not None:
        return settings
    auth = settings.auth.model_copy(update={"token_secret": secrets.token_hex(32)})
    return settings.model_copy(update={"auth": auth})


def connect(cluster: ClusterSettings) -> None:
    """Join the Ray cluster at `cluster.address` ('local': start one in this process, no dashboard)."""
    if ray.is_initialized():
        return
    if cluster.address == LOCAL:
        ray.init(num_cpus=cluster.local_cpus, include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=cluster.address, logging_level=logging.WARNING)


def disconnect(cluster: ClusterSettings) -> None:
    """Leave Ray; a 'local' instance ends with it."""
    if ray.is_initialized():
        ray.shutdown()


class WorkerPool:
    """`cluster.workers` avatar workers placed by Ray, each running `settings` with the model from `factory`."""

    def __init__(self, settings: ServerSettings, cluster: ClusterSettings, factory: PipelineFactory) -> None:
        self.settings = with_pool_secret(settings)
        self.cluster = cluster
        self.factory = factory
        self.workers: list[Worker] = []
        self.placement = Placement([], settings.sessions.retry_after_s)
        # uploaded avatar id -> (ObjectRef of its bytes, name, the mouth the upload placed)
        self.avatars: dict[str, tuple[Any, str | None, MouthBox | None]] = {}
        self.workers_lost = 0   # worker processes that died or stopped answering while holding sessions
        self.sessions_lost = 0  # sessions that ended with them
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Create the actors (Ray places them where their resources are) and watch each."""
        resources = self.cluster.worker
        remote = ray.remote(AvatarWorker).options(
            num_gpus=resources.num_gpus, num_cpus=resources.num_cpus, max_restarts=-1, max_task_retries=0,
            runtime_env={"env_vars": WORKER_ENV})
        for index in range(self.cluster.workers):
            actor = remote.remote(self.settings, self.factory, resources.host)
            self.workers.append(Worker(Load(f"w{index}"), actor))
        self.placement.loads = [worker.load for worker in self.workers]
        self._tasks = [asyncio.create_task(self._watch(worker), name=f"watch {worker.name}")
                       for worker in self.workers]

    async def wait_up(self, count: int, timeout_s: float) -> None:
        """Until `count` workers serve (TimeoutError after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while sum(worker.load.up for worker in self.workers) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} workers up after {timeout_s:.0f} s")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Stop watching, end every worker's sessions and stop its server, then the actors."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        stops = [asyncio.wait_for(worker.actor.stop.remote(), 20) for worker in self.workers if worker.url]
        await asyncio.gather(*stops, return_exceptions=True)
        for worker in self.workers:
            with contextlib.suppress(RayError):
                ray.kill(worker.actor, no_restart=True)

    def worker(self, name: str) -> Worker:
        return next(worker for worker in self.workers if worker.name == name)

    def owner(self, session_id: str) -> Worker | None:
        """The worker that holds a session (None: the front does not know the session)."""
        load = self.placement.owner(session_id)
        return None if load is None else self.worker(load.name)

    def any_up(self) -> Worker | None:
        """A serving worker for requests about no session in particular (the least loaded)."""
        up = [worker for worker in self.workers if worker.load.up]
        return min(up, key=lambda worker: len(worker.load.sessions), default=None)

    #################################################################################
    #                                    Health                                     #
    #################################################################################

    def suspect(self, worker: Worker) -> None:
        """A request to it failed at the transport: no new sessions until its next status says it serves."""
        worker.load.up = False
        worker.wake.set()

    async def _watch(self, worker: Worker) -> None:
        while True:
            try:
                await self._check(worker)
            except Exception as error:  # noqa: BLE001 - a watcher must outlive any one failed check
                logger.warning("worker %s: health check failed: %r", worker.name, error)
                self._down(worker, "health check failed")
            worker.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(worker.wake.wait(), self.cluster.health_interval_s)

    async def _check(self, worker: Worker) -> None:
        """Read its status; start it when it is a new process; mark it up or down."""
        asked = time.monotonic()
        try:
            status: WorkerStatus = await asyncio.wait_for(worker.actor.status.remote(), self.cluster.health_timeout_s)
        except (RayError, asyncio.TimeoutError) as error:
            self._down(worker, f"status unanswered ({type(error).__name__})")
            worker.status = None  # not started as far as the front knows (no avatars, no requests)
            return
        if status.incarnation != worker.incarnation:
            if worker.incarnation is not None:
                self._down(worker, "its process was restarted")
            worker.incarnation = status.incarnation
            worker.incarnations += 1
        if status.url is None:
            status = await self._start(worker, status)
        worker.status = status
        load = worker.load
        load.capacity = status.max_sessions
        load.reconcile(status.sessions, status.draining, asked)
        if status.ready and not load.up:
            load.up, load.up_since = True, time.monotonic()
            logger.info("worker %s up at %s (pid %d, %d slots)", worker.name, status.url, status.pid,
                        status.max_sessions)
        elif not status.ready:
            load.up = False

    async def _start(self, worker: Worker, status: WorkerStatus) -> WorkerStatus:
        """A fresh process: serve, then push every uploaded avatar to it."""
        logger.info("worker %s: starting (pid %d, process %d)", worker.name, status.pid, worker.incarnations)
        status = await asyncio.wait_for(worker.actor.start.remote(), self.cluster.start_timeout_s)
        worker.status = status  # from here on uploads go to it too
        pushes = [worker.actor.add_avatar.remote(data, name, avatar_id, mouth)
                  for avatar_id, (data, name, mouth) in list(self.avatars.items())]
        for result in await asyncio.gather(*pushes):
            if result.problem is not None:
                logger.warning("worker %s refused a stored avatar: %s", worker.name, result.problem[1])
        return status

    def _down(self, worker: Worker, reason: str) -> None:
        """The worker does not serve: its sessions (if its process died, they died with it) end for the front."""
        load = worker.load
        if load.sessions or worker.relays:
            logger.warning("worker %s down (%s): %d sessions lost", worker.name, reason, len(load.sessions))
            self.workers_lost += 1
            self.sessions_lost += len(load.sessions)
        elif load.up:
            logger.warning("worker %s down (%s)", worker.name, reason)
        load.up = False
        load.sessions.clear()
        for relay in list(worker.relays):
            relay.worker_lost()
        worker.relays.clear()

    #################################################################################
    #                                    Avatars                                    #
    #################################################################################

    def started(self) -> list[Worker]:
        return [worker for worker in self.workers if worker.url is not None]

    async def add_avatar(self, data: bytes, name: str | None, mouth: MouthBox | None = None) -> AvatarResult:
        """Validate on one worker, then store on every worker (bytes once in Ray's object store)."""
        started = [worker for worker in self.started() if worker.load.up] or self.started()
        if not started:
            return AvatarResult(problem=(503, "no worker is up; retry later", "not_ready"))
        avatar_id, ref = "av_" + secrets.token_hex(8), ray.put(data)
        first = await started[0].actor.add_avatar.remote(ref, name, avatar_id, mouth)
        if first.problem is not None:
            return first
        self.avatars[avatar_id] = (ref, name, mouth)
        others = [w.actor.add_avatar.remote(ref, name, avatar_id, mouth) for w in self.started() if w is not started[0]]
        for result in await asyncio.gather(*others, return_exceptions=True):
            if isinstance(result, BaseException) or result.problem is not None:
                logger.warning("an avatar did not reach every worker: %r", result)
        return first

    async def delete_avatar(self, avatar_id: str) -> AvatarResult:
        """Delete on one worker (its answer is the client's), then on the others and from the store."""
        started = self.started()
        if not started:
            return AvatarResult(problem=(503, "no worker is up; retry later", "not_ready"))
        first = await started[0].actor.delete_avatar.remote(avatar_id)
        if first.problem is None:
            self.avatars.pop(avatar_id, None)
            await asyncio.gather(*(w.actor.delete_avatar.remote(avatar_id) for w in started[1:]),
                                 return_exceptions=True)
        return first

    async def drain(self, worker: Worker, draining: bool) -> WorkerStatus:
        """Stop (or resume) placing sessions on it; its live sessions go on."""
        worker.load.drain(draining, time.monotonic())
        status: WorkerStatus = await worker.actor.drain.remote(draining)
        return status

    def restart(self, worker: Worker) -> None:
        """Have Ray restart the worker's process (it loads its code and model afresh); watched like a crash."""
        worker.load.up = False
        ray.kill(worker.actor, no_restart=False)
        worker.wake.set()
