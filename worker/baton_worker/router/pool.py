"""The workers of one role: gRPC channels, health polling, ejection and in-flight accounting.

A worker is used only while its last Health answer said ready (and not draining) and it is not
ejected. A failed request ejects it at once for a back-off that doubles with consecutive
failures; polling keeps asking, and a ready answer after the back-off brings it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from baton_worker.rpc import pb2, pb2_grpc
from baton_worker.tls import TlsFiles, aio_channel

from .placement import WorkerLoad
from .prefill_stream import PrefillCaller
from .prefix_index import PrefixView, PromptHashes, apply_events, cached_tokens

log = logging.getLogger("baton.router.pool")

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.enable_retries", 0),  # the router decides about retries itself
    # Workers start after (or restart under) the router: reconnect quickly instead of gRPC's
    # default back-off of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
# When the TLS files change, calls in flight finish on the old channels for at most this long
# (the longest a Generate may run: DispatchConfig.request_timeout_s).
ROTATION_GRACE_S = 3600.0


@dataclass(frozen=True)
class PoolConfig:
    poll_interval_s: float = 0.5
    health_timeout_s: float = 2.0
    # A busy worker may answer Health late; only this many slow answers in a row mark it down.
    # A refused connection (UNAVAILABLE) marks it down at once.
    slow_health_limit: int = 3
    eject_base_s: float = 1.0
    eject_max_s: float = 30.0


@dataclass
class Worker:
    """One worker as the router sees it."""

    address: str
    role: str
    channel: grpc.aio.Channel
    stub: Any  # PrefillWorkerStub | DecodeWorkerStub
    health: Any = None  # last pb2.HealthResponse
    reachable: bool = False
    ejected_until: float = 0.0
    failures: int = 0  # consecutive request failures
    slow_health: int = 0  # consecutive Health calls that failed other than UNAVAILABLE
    inflight: int = 0
    inflight_prompt_tokens: int = 0
    down: asyncio.Event = field(default_factory=asyncio.Event)  # set while unreachable
    calls: PrefillCaller | None = None  # prefill workers: Prefill over one long-lived stream
    prefix: PrefixView | None = None  # its prefix cache as of the last Health answer

    def usable(self, now: float) -> bool:
        h = self.health
        return self.reachable and h is not None and h.ready and not h.draining and now >= self.ejected_until

    def load(self, now: float, prompt: PromptHashes | None = None) -> WorkerLoad:
        """Its load snapshot; with ``prompt``, also how much of that prompt it holds cached."""
        h = self.health
        return WorkerLoad(
            address=self.address,
            healthy=self.usable(now),
            queue_depth=h.queue_depth if h else 0,
            queued_prompt_tokens=h.queued_prompt_tokens if h else 0,
            running=h.running if h else 0,
            free_blocks=h.free_blocks if h else 0,
            total_blocks=h.total_blocks if h else 0,
            max_batch_size=(h.max_batch_size if h else 0) or 1,
            kv_compat=h.kv_compat_hash if h else "",
            inflight=self.inflight,
            inflight_prompt_tokens=self.inflight_prompt_tokens,
            cached_tokens=cached_tokens(self.prefix, prompt) if prompt is not None else 0,
        )

    def health_request(self) -> pb2.HealthRequest:
        view = self.prefix
        return pb2.HealthRequest(
            want_prefix_events=True,
            prefix_events_after=view.seq if view else 0,
            prefix_events_engine=view.engine_id if view else "",
        )

    def adopt(self, h: pb2.HealthResponse) -> None:
        """Take a Health answer: its load and its prefix cache's changes."""
        self.health = h
        if not h.HasField("prefix_cache"):
            self.prefix = None  # caching off (or a worker that predates it)
            return
        ev = h.prefix_cache
        self.prefix = apply_events(
            self.prefix or PrefixView(),
            h.engine_id,
            ev.salt,
            ev.block_size,
            ev.seq,
            ev.reset,
            ev.stored,
            ev.evicted,
        )


class WorkerPool:
    """The workers of one role (``"prefill"`` or ``"decode"``)."""

    def __init__(self, role: str, cfg: PoolConfig | None = None, tls: TlsFiles | None = None) -> None:
        if role not in ("prefill", "decode"):
            raise ValueError(f"role: expected prefill or decode, got {role!r}")
        self.role = role
        self.cfg = cfg or PoolConfig()
        self.tls = tls  # mutual TLS to the workers; None: plaintext
        self._tls_generation = tls.current().generation if tls is not None else 0
        self._retiring: set[asyncio.Task] = set()  # old channels closing after a TLS change
        self.workers: dict[str, Worker] = {}
        self.waiting = 0  # requests held in the router until a worker of this role is usable
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """Adopt the discovered set of workers: open channels to new ones, close removed ones."""
        wanted = list(dict.fromkeys(addresses))
        for addr in list(self.workers):
            if addr not in wanted:
                w = self.workers.pop(addr)
                # Streams still open there get a grace period to end on their own.
                asyncio.get_running_loop().create_task(_close_worker(w, grace=30.0))
        for addr in wanted:
            if addr not in self.workers:
                w = Worker(address=addr, role=self.role, channel=None, stub=None)  # type: ignore[arg-type]
                self._connect(w)
                w.down.set()
                self.workers[addr] = w
        self._changed.set()

    def _connect(self, w: Worker) -> None:
        """Give ``w`` a new channel (with the current TLS files), stub and prefill stream caller."""
        ch = aio_channel(w.address, self.tls, _CHANNEL_OPTIONS)
        w.channel = ch
        w.stub = (pb2_grpc.PrefillWorkerStub if self.role == "prefill" else pb2_grpc.DecodeWorkerStub)(ch)
        w.calls = PrefillCaller(ch, w.address) if self.role == "prefill" else None

    def rotate_if_changed(self) -> bool:
        """When the TLS files changed: new channels to every worker for new calls, while calls in
        flight finish on the old ones (closed once idle, or after :data:`ROTATION_GRACE_S`)."""
        if self.tls is None:
            return False
        generation = self.tls.current().generation
        if generation == self._tls_generation:
            return False
        self._tls_generation = generation
        loop = asyncio.get_running_loop()
        for w in self.workers.values():
            old_channel, old_calls = w.channel, w.calls
            self._connect(w)
            task = loop.create_task(_close_channel(old_channel, old_calls, ROTATION_GRACE_S))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        log.info("%s workers: TLS files changed: new channels to %d workers", self.role, len(self.workers))
        return True

    def loads(self, prompt: PromptHashes | None = None) -> list[WorkerLoad]:
        now = time.monotonic()
        return [w.load(now, prompt) for w in self.workers.values()]

    def usable_count(self) -> int:
        now = time.monotonic()
        return sum(w.usable(now) for w in self.workers.values())

    def queue_depth(self) -> int:
        """Requests waiting for this role: in the workers' queues plus held in the router."""
        reported = sum(w.health.queue_depth for w in self.workers.values() if w.reachable and w.health)
        return reported + self.waiting

    def viewed_blocks(self) -> int:
        """Blocks the workers of this role hold in their prefix caches, as last reported."""
        return sum(len(w.prefix.hashes) for w in self.workers.values() if w.prefix is not None)

    def max_model_len(self) -> int:
        """The smallest context length any reachable worker reports (0 when none reported)."""
        lens = [w.health.max_model_len for w in self.workers.values() if w.health and w.health.max_model_len]
        return min(lens, default=0)

    def mark_failed(self, address: str, reason: str) -> None:
        """Eject a worker after a failed request; back-off doubles with consecutive failures."""
        w = self.workers.get(address)
        if w is None:
            return
        now = time.monotonic()
        if now < w.ejected_until:
            return  # the same outage seen by another request: do not escalate the back-off
        w.failures += 1
        backoff = min(self.cfg.eject_max_s, self.cfg.eject_base_s * 2 ** (w.failures - 1))
        w.ejected_until = now + backoff
        log.warning("%s worker %s ejected for %.1fs: %s", self.role, address, backoff, reason)

    def mark_ok(self, address: str) -> None:
        w = self.workers.get(address)
        if w is not None:
            w.failures = 0

    async def wait_usable(self, timeout_s: float) -> bool:
        """Wait until some worker is usable; False after ``timeout_s``. Counts as waiting meanwhile."""
        deadline = time.monotonic() + timeout_s
        self.waiting += 1
        try:
            while self.usable_count() == 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=min(left, self.cfg.poll_interval_s))
            return True
        finally:
            self.waiting -= 1

    async def poll_once(self) -> None:
        self.rotate_if_changed()
        await asyncio.gather(*(self._check(w) for w in list(self.workers.values())))
        self._changed.set()

    async def _check(self, w: Worker) -> None:
        try:
            h = await w.stub.Health(w.health_request(), timeout=self.cfg.health_timeout_s)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                w.slow_health += 1
                if w.slow_health < self.cfg.slow_health_limit:
                    return
            if w.reachable:
                log.warning("%s worker %s unreachable: %s", self.role, w.address, e.code().name)
            if w.calls is not None and e.code() == grpc.StatusCode.UNAVAILABLE:
                # Unreachable: its prefills in flight fail now, not at their deadline. (A worker
                # that is only slow to answer Health keeps them running.)
                w.calls.reset(f"worker unreachable ({e.details()})")
            w.reachable = False
            w.down.set()
            return
        w.slow_health = 0
        if not w.reachable:
            log.info("%s worker %s reachable (ready=%s)", self.role, w.address, h.ready)
        w.adopt(h)
        w.reachable = True
        w.down.clear()

    async def run(self) -> None:
        """Poll every worker's Health forever (cancel the task to stop)."""
        while True:
            await self.poll_once()
            await asyncio.sleep(self.cfg.poll_interval_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"poll-{self.role}")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*(_close_worker(w) for w in self.workers.values()))

    def snapshot(self) -> tuple[int, int, int]:
        """(queue depth, usable workers, ejected or unreachable workers) for metrics."""
        usable = self.usable_count()
        return self.queue_depth(), usable, len(self.workers) - usable


async def _close_worker(w: Worker, grace: float | None = None) -> None:
    await _close_channel(w.channel, w.calls, grace)


async def _close_channel(channel: grpc.aio.Channel, calls: PrefillCaller | None, grace: float | None) -> None:
    if calls is not None:
        await calls.close()  # half-close: prefills in flight still get their answers
    await channel.close(grace=grace)
