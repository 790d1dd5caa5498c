"""The front's /metrics: the pool (pool-wide and per worker, read from the workers' last status at scrape time),
the front's own share of session setup, refusals, and the front process.

Pool-wide `omnilive_sessions_active` and `omnilive_sessions_max` keep their single-server names, so a
dashboard of one server reads the pool; each worker's own /metrics (engine, stages, frames) stays on its node.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from avatar_server.cluster.pool import WorkerPool

SETUP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


class PoolCollector(Collector):
    """Gauges of the pool's present state and its loss counters, read when scraped."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        workers = self.pool.workers
        per_worker: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "up": GaugeMetricFamily("omnilive_worker_up", "1 while the worker takes sessions", labels=["worker"]),
            "draining": GaugeMetricFamily("omnilive_worker_draining", "1 while the worker is drained",
                                          labels=["worker"]),
            "sessions": GaugeMetricFamily("omnilive_worker_sessions", "live sessions on the worker", labels=["worker"]),
            "capacity": GaugeMetricFamily("omnilive_worker_sessions_max", "the worker's session slots",
                                          labels=["worker"]),
            "fps": GaugeMetricFamily("omnilive_worker_generated_fps", "freshly generated frames shown per second, "
                                     "all the worker's sessions", labels=["worker"]),
            "latency": GaugeMetricFamily("omnilive_worker_latency_p50_seconds", "median of its sessions' p50 "
                                         "latency (audio in -> frame out)", labels=["worker"]),
            "restarts": CounterMetricFamily("omnilive_worker_restarts", "times Ray restarted the worker's process",
                                            labels=["worker"]),
        }
        for worker in workers:
            label, load, status = [worker.name], worker.load, worker.status
            per_worker["up"].add_metric(label, float(load.up))
            per_worker["draining"].add_metric(label, float(load.draining))
            per_worker["sessions"].add_metric(label, len(load.sessions))
            per_worker["capacity"].add_metric(label, load.capacity)
            per_worker["restarts"].add_metric(label, max(0, worker.incarnations - 1))
            if status is not None:
                per_worker["fps"].add_metric(label, status.generated_fps)
                if status.latency_ms_p50 is not None:
                    per_worker["latency"].add_metric(label, status.latency_ms_p50 / 1000)
        yield from per_worker.values()
        placement = self.pool.placement
        yield GaugeMetricFamily("omnilive_sessions_active", "live sessions, all workers", value=placement.sessions)
        yield GaugeMetricFamily("omnilive_sessions_max", "session slots of the workers taking sessions",
                                value=placement.capacity)
        yield GaugeMetricFamily("omnilive_pool_workers_up", "workers taking sessions",
                                value=sum(worker.load.up for worker in workers))
        yield GaugeMetricFamily("omnilive_pool_generated_fps", "freshly generated frames shown per second, pool-wide",
                                value=sum(w.status.generated_fps for w in workers if w.status is not None))
        yield CounterMetricFamily("omnilive_workers_lost", "worker processes lost while holding sessions",
                                  value=self.pool.workers_lost)
        yield CounterMetricFamily("omnilive_sessions_lost", "sessions that ended because their worker was lost",
                                  value=self.pool.sessions_lost)


class FrontMetrics:
    """The front's registry: the pool, refusals, the front's share of session setup, the front process."""

    def __init__(self, pool: WorkerPool) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(PoolCollector(pool))
        self.sessions_rejected = Counter("omnilive_sessions_rejected_total", "refused sessions", ["reason"],
                                         registry=self.registry)
        self.setup_overhead = Histogram("omnilive_front_setup_seconds", "the front's own share of a session setup "
                                        "(placement and forwarding; the worker's time excluded)",
                                        buckets=SETUP_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
