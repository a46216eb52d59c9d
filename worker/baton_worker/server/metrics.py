"""Prometheus metrics of a worker: load gauges read at scrape time, transfer counters.

Names (role is a label so one dashboard covers both pools):
``baton_worker_queue_depth``, ``baton_worker_running``, ``baton_worker_kv_blocks{state}``,
``baton_worker_kv_block_usage`` (0..1), ``baton_worker_ready``, ``baton_worker_draining``,
``baton_worker_requests_total{outcome}``, ``baton_worker_kv_transfer_bytes_total``,
``baton_worker_kv_transfer_seconds`` (histogram), ``baton_worker_kv_freed{reason}`` (prefill, a gauge of counts),
``baton_worker_prefix_cache_queried_tokens_total``, ``baton_worker_prefix_cache_hit_tokens_total``
(hit rate = rate of hits / rate of queries), ``baton_worker_prefix_cache_evicted_blocks_total``,
``baton_worker_prefix_cache_blocks`` (blocks named by a prefix hash, held or evictable),
``baton_worker_kv_backend{requested,backend}`` (1) and ``baton_worker_kv_backend_fallback`` (1 when
``--kv-backend auto`` found no NIXL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from baton_worker.engine.kv_pool import PrefixCacheStats


@dataclass(frozen=True)
class LoadSnapshot:
    """What the gauges show; produced by the server at scrape time."""

    queue_depth: int
    running: int
    free_blocks: int
    total_blocks: int
    ready: bool
    draining: bool
    freed: dict[str, int]
    prefix: PrefixCacheStats | None = None


class _LoadCollector(Collector):
    def __init__(self, role: str, snapshot: Callable[[], LoadSnapshot]) -> None:
        self._role = role
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._snapshot()
        role = [self._role]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["role"])
            g.add_metric(role, value)
            return g

        yield gauge(
            "baton_worker_queue_depth",
            "Requests waiting (not yet running), incl. waits for KV blocks",
            s.queue_depth,
        )
        yield gauge("baton_worker_running", "Requests running (decode batch / prefills in flight)", s.running)
        blocks = GaugeMetricFamily("baton_worker_kv_blocks", "KV blocks by state", labels=["role", "state"])
        blocks.add_metric([self._role, "free"], s.free_blocks)
        blocks.add_metric([self._role, "used"], s.total_blocks - s.free_blocks)
        yield blocks
        usage = (s.total_blocks - s.free_blocks) / s.total_blocks if s.total_blocks else 0.0
        yield gauge("baton_worker_kv_block_usage", "Fraction of KV blocks in use", usage)
        yield gauge("baton_worker_ready", "1 when ready to take requests", 1.0 if s.ready else 0.0)
        yield gauge("baton_worker_draining", "1 while draining after SIGTERM", 1.0 if s.draining else 0.0)
        freed = GaugeMetricFamily(
            "baton_worker_kv_freed",
            "Held KV requests freed, by what freed them (prefill)",
            labels=["role", "reason"],
        )
        for reason, n in sorted(s.freed.items()):
            freed.add_metric([self._role, reason], n)
        yield freed
        if s.prefix is not None:
            yield from self._prefix(s.prefix)

    def _prefix(self, p: PrefixCacheStats) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        role = [self._role]
        for name, doc, value in (
            (
                "queried_tokens",
                "Prompt tokens looked up in the prefix cache (whole blocks)",
                p.queried_tokens,
            ),
            ("hit_tokens", "Prompt tokens whose KV came from the prefix cache", p.hit_tokens),
            ("evicted_blocks", "Cached KV blocks evicted to make room", p.evicted_blocks),
        ):
            c = CounterMetricFamily(f"baton_worker_prefix_cache_{name}", doc, labels=["role"])
            c.add_metric(role, value)
            yield c
        g = GaugeMetricFamily(
            "baton_worker_prefix_cache_blocks",
            "KV blocks named by a prefix hash (held or evictable)",
            labels=["role"],
        )
        g.add_metric(role, p.cached_blocks)
        yield g


class WorkerMetrics:
    """One registry per worker process."""

    def __init__(self, role: str, snapshot: Callable[[], LoadSnapshot]) -> None:
        self.role = role
        self.registry = CollectorRegistry()
        self.registry.register(_LoadCollector(role, snapshot))
        self.requests = Counter(
            "baton_worker_requests",
            "Requests served, by outcome",
            ["role", "outcome"],
            registry=self.registry,
        )
        self.kv_bytes = Counter(
            "baton_worker_kv_transfer_bytes",
            "KV bytes moved between workers",
            ["role", "backend"],
            registry=self.registry,
        )
        self.kv_seconds = Histogram(
            "baton_worker_kv_transfer_seconds",
            "Seconds per KV transfer (one request)",
            ["role", "backend"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=self.registry,
        )

    def kv_backend(self, requested: str, running: str, fallback: bool) -> None:
        """Which KV data path this worker runs, and whether ``auto`` fell back to gRPC."""
        info = Gauge(
            "baton_worker_kv_backend",
            "1 for the KV data path this worker runs (requested: --kv-backend)",
            ["role", "requested", "backend"],
            registry=self.registry,
        )
        info.labels(self.role, requested, running).set(1)
        fell = Gauge(
            "baton_worker_kv_backend_fallback",
            "1 when --kv-backend auto found no NIXL and moves KV over the gRPC stream",
            ["role"],
            registry=self.registry,
        )
        fell.labels(self.role).set(1 if fallback else 0)

    def request(self, outcome: str) -> None:
        self.requests.labels(self.role, outcome).inc()

    def transfer(self, backend: str, nbytes: int, seconds: float) -> None:
        self.kv_bytes.labels(self.role, backend).inc(nbytes)
        self.kv_seconds.labels(self.role, backend).observe(seconds)
