"""The router's Prometheus metrics, in a registry of its own (several routers may share a process
in tests). ``baton_queue_depth{role}`` is the autoscaling signal: keep its name and labels.
``baton_router_queue_depth{role}`` is this router's own part of it (requests it holds), so that
several routers of one pool can be combined without counting the workers' queues once per router.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .placement import LOAD, PREFIX_HIT, WorkerLoad

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
_BYTES_BUCKETS = tuple(float(1 << k) for k in range(10, 34, 2))  # 1 KiB .. 8 GiB

# role -> (queue depth, healthy workers, ejected workers)
PoolSnapshot = Callable[[], dict[str, tuple[int, int, int]]]
# role -> requests held in the router until a worker of the role is usable
HeldSnapshot = Callable[[], dict[str, int]]


class _PoolCollector(Collector):
    def __init__(self, snapshot: PoolSnapshot, inflight: Callable[[], int]) -> None:
        self._snapshot = snapshot
        self._inflight = inflight

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "baton_queue_depth",
            "Requests waiting for a worker of this role (the autoscaling signal): waiting in the "
            "workers' queues plus waiting in the router for a worker of the role",
            labels=["role"],
        )
        workers = GaugeMetricFamily(
            "baton_workers", "Workers the router knows, by role and state", labels=["role", "state"]
        )
        for role, (queued, healthy, ejected) in sorted(self._snapshot().items()):
            depth.add_metric([role], queued)
            workers.add_metric([role, "healthy"], healthy)
            workers.add_metric([role, "ejected"], ejected)
        yield depth
        yield workers
        yield GaugeMetricFamily(
            "baton_requests_inflight", "Requests the router is serving", value=self._inflight()
        )


class _HeldCollector(Collector):
    def __init__(self, held: HeldSnapshot) -> None:
        self._held = held

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "baton_router_queue_depth",
            "Requests held in this router until a worker of the role is usable: the router's own part "
            "of baton_queue_depth (the rest, the workers' queues, every router of the pool sees alike)",
            labels=["role"],
        )
        for role, n in sorted(self._held().items()):
            g.add_metric([role], n)
        yield g


class _PrefixViewCollector(Collector):
    def __init__(self, view: Callable[[], dict[str, int]]) -> None:
        self._view = view

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "baton_router_prefix_view_blocks",
            "KV blocks the router knows the workers of a role hold in their prefix caches",
            labels=["role"],
        )
        for role, blocks in sorted(self._view().items()):
            g.add_metric([role], blocks)
        yield g


class RouterMetrics:
    """All router metrics; ``render()`` is the /metrics body."""

    def __init__(
        self,
        snapshot: PoolSnapshot,
        inflight: Callable[[], int],
        prefix_view: Callable[[], dict[str, int]] | None = None,
        held: HeldSnapshot | None = None,
    ) -> None:
        r = self.registry = CollectorRegistry()
        r.register(_PoolCollector(snapshot, inflight))
        if held is not None:
            r.register(_HeldCollector(held))
        if prefix_view is not None:
            r.register(_PrefixViewCollector(prefix_view))
        self._add_counters(r)
        self._add_histograms(r)

    def _add_counters(self, r: CollectorRegistry) -> None:
        self.requests = Counter("baton_requests", "Requests received", ["api", "stream"], registry=r)
        self.errors = Counter(
            "baton_request_errors", "Requests answered with an error", ["status", "type"], registry=r
        )
        self.retries = Counter(
            "baton_retries",
            "Attempts repeated on another worker, by role and cause",
            ["role", "reason"],
            registry=r,
        )
        self.placements = Counter(
            "baton_prefill_placement",
            "Prefill placement decisions: remote (disaggregated) or local on the decode worker",
            ["decision", "reason"],
            registry=r,
        )
        self.prefix_placements = Counter(
            "baton_router_prefix_placement",
            "Workers chosen, by role and why: prefix_hit (it holds part of the prompt in its prefix "
            "cache) or load (none does)",
            ["role", "reason"],
            registry=r,
        )
        self.prefix_cached_tokens = Counter(
            "baton_router_prefix_cached_tokens",
            "Prompt tokens the chosen worker held in its prefix cache",
            ["role"],
            registry=r,
        )
        self.prefix_best_tokens = Counter(
            "baton_router_prefix_best_tokens",
            "Prompt tokens the worker with the longest cached prefix held (what always choosing it "
            "would have reused)",
            ["role"],
            registry=r,
        )
        self.prefill_calls = Counter(
            "baton_prefill_calls",
            "Prefill calls to prefill workers, by transport: one long-lived stream per worker, "
            "or unary calls to workers without it",
            ["transport"],
            registry=r,
        )
        self.failovers = Counter(
            "baton_decode_resumes",
            "Streams resumed on another decode worker after tokens were sent",
            registry=r,
        )
        self.prompt_tokens = Counter("baton_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter(
            "baton_generation_tokens", "Output tokens sent to clients", registry=r
        )

    def _add_histograms(self, r: CollectorRegistry) -> None:
        self.ttft = Histogram(
            "baton_time_to_first_token_seconds",
            "Arrival to first output token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "baton_inter_token_latency_seconds",
            "Time between output tokens",
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "baton_e2e_request_latency_seconds",
            "Arrival to last output token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.kv_bytes = Histogram(
            "baton_kv_transfer_bytes",
            "KV cache bytes moved prefill -> decode per request",
            buckets=_BYTES_BUCKETS,
            registry=r,
        )
        self.kv_seconds = Histogram(
            "baton_kv_transfer_seconds",
            "KV cache transfer time per request",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def prefix_placement(self, role: str, chosen: WorkerLoad, candidates: Sequence[WorkerLoad]) -> None:
        """Count one placement against the prefix caches' contents."""
        best = max((w.cached_tokens for w in candidates if w.healthy), default=0)
        self.prefix_placements.labels(role, PREFIX_HIT if chosen.cached_tokens else LOAD).inc()
        self.prefix_cached_tokens.labels(role).inc(chosen.cached_tokens)
        self.prefix_best_tokens.labels(role).inc(best)

    def render(self) -> bytes:
        return generate_latest(self.registry)
