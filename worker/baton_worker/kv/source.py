"""The prefill side of the KV handoff: hold blocks, hand out handles, serve metadata and bytes.

:class:`KvSource` owns nothing of the model: it is given the pool tensor and a ``free`` callback
(the prefill runner's release). It registers the pool with NIXL once (when the backend is
``nixl``), issues :class:`KvHandle` messages, answers ``GetAgentMetadata`` and ``PullKv``, and
frees a request's blocks on the decode side's notification, ``Release``, ``Cancel`` or the TTL,
whichever comes first (a background thread polls notifications and expiry).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from baton_worker.kv.grpc_stream import DEFAULT_CHUNK_BYTES, iter_chunks
from baton_worker.kv.handle import CompatInfo, ShardInfo, build_handle
from baton_worker.kv.held import HeldBlocks, parse_done
from baton_worker.kv.nixl_agent import NixlEndpoint, Region
from baton_worker.rpc import pb2

log = logging.getLogger("baton.kv")

HOUSEKEEPING_BUSY_S = 0.0005
HOUSEKEEPING_IDLE_S = 0.02


class PullRefused(Exception):
    """A PullKv request that cannot be served; ``status`` is the gRPC status code name."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def storage_region(storage: torch.Tensor) -> Region:
    """The NIXL region of a pool tensor (host memory or one GPU's memory)."""
    cuda = storage.device.type == "cuda"
    return Region(
        address=storage.data_ptr(),
        length=storage.numel() * storage.element_size(),
        device_id=(storage.device.index or 0) if cuda else 0,
        memory_type="VRAM" if cuda else "DRAM",
    )


@dataclass
class SourceCounters:
    handles: int = 0
    freed_by_notification: int = 0
    freed_by_release: int = 0
    freed_by_ttl: int = 0
    pulled_bytes: int = 0


class KvSource:
    """KV blocks held for decode workers by one prefill rank (TP rank 0 of a TP-1 worker)."""

    def __init__(
        self,
        *,
        storage: torch.Tensor,
        compat: CompatInfo,
        free: Callable[[str, list[int]], None],
        backend: str,
        address: str,
        ttl_s: float = 60.0,
        engine_id: str | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        pull_delay_s: float = 0.0,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        extra_shards: tuple[ShardInfo, ...] = (),
    ) -> None:
        if backend not in ("nixl", "grpc"):
            raise ValueError(f"backend must be 'nixl' or 'grpc', got {backend!r}")
        self.storage = storage
        self.compat = compat
        self.backend = backend
        self.address = address
        self.ttl_ms = int(ttl_s * 1000)
        self.engine_id = engine_id or uuid.uuid4().hex
        self.chunk_bytes = chunk_bytes
        # Fault injection for tests: a pause between PullKv chunks opens a window to kill the
        # prefill process mid-transfer.
        self.pull_delay_s = pull_delay_s
        self.counters = SourceCounters()
        # Tensor parallelism: the KV shards of ranks 1..N-1 (each registered and served by its
        # own rank); this source's pool is rank 0's shard.
        self.extra_shards = tuple(extra_shards)
        self._clock_ms = clock_ms
        self._free = free
        self.held = HeldBlocks(self._on_free)
        self.region = storage_region(storage)
        self.endpoint: NixlEndpoint | None = None
        self._metadata_sha = ""
        if backend == "nixl":
            self.endpoint = NixlEndpoint(f"baton-prefill-{self.engine_id[:12]}", self.region)
            self._metadata_sha = hashlib.sha256(self.endpoint.metadata).hexdigest()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._housekeeping, name="baton-kv-source", daemon=True)
        self._thread.start()

    def _on_free(self, request_id: str, block_ids: list[int]) -> None:
        try:
            self._free(request_id, block_ids)
        except Exception:  # the runner already freed them (e.g. Cancel raced the TTL)
            log.exception("freeing the KV blocks of %s", request_id)

    @property
    def num_blocks(self) -> int:
        return int(self.storage.shape[1])

    def issue(self, request_id: str, block_ids: list[int], num_tokens: int) -> pb2.KvHandle:
        """Hold ``block_ids`` for ``request_id`` until read, released or expired; return the handle."""
        expires = self._clock_ms() + self.ttl_ms
        self.held.hold(request_id, block_ids, expires)
        self.counters.handles += 1
        self._wake.set()  # a READ and its notification follow: start the fast polling now
        heads = int(self.storage.shape[3])
        shard = ShardInfo(
            rank=0,
            head_start=0,
            head_end=heads,
            agent_name=self.endpoint.name if self.endpoint else "",
            metadata_address=self.address,
            base_address=self.region.address,
            region_bytes=self.region.length,
            num_blocks_total=self.num_blocks,
            device_id=self.region.device_id,
            memory_type=self.region.memory_type,
        )
        return build_handle(
            request_id=request_id,
            engine_id=self.engine_id,
            compat=self.compat,
            num_tokens=num_tokens,
            # Rank 0 last: a decode worker reading the shards in order posts its done
            # notification (which frees the blocks) with its last READ.
            shards=[*self.extra_shards, shard],
            block_ids=block_ids,
            prefill_address=self.address,
            expires_unix_ms=expires,
            backend=self.backend,
        )

    def release(self, request_id: str) -> bool:
        """Free a request's blocks now (Release / Cancel); False when already freed."""
        freed = self.held.release(request_id)
        if freed:
            self.counters.freed_by_release += 1
        return freed

    def agent_metadata(self, rank: int) -> pb2.AgentMetadata:
        """This rank's NIXL metadata; PullRefused when NIXL is off or another rank is asked."""
        if rank != 0:
            raise PullRefused("NOT_FOUND", f"rank: this worker serves rank 0, not rank {rank}")
        if self.endpoint is None:
            raise PullRefused("FAILED_PRECONDITION", "backend: this prefill worker runs without NIXL (grpc)")
        return pb2.AgentMetadata(
            agent_name=self.endpoint.name,
            metadata=self.endpoint.metadata,
            compat_hash=self.compat.hash(),
            engine_id=self.engine_id,
            metadata_sha256=self._metadata_sha,
        )

    def pull(self, req: pb2.PullKvRequest) -> Iterator[pb2.KvChunk]:
        """Validate a PullKv request (PullRefused naming the field), then stream its chunks."""
        if req.engine_id != self.engine_id:
            raise PullRefused(
                "NOT_FOUND",
                f"engine_id: {req.engine_id!r} is not this worker ({self.engine_id!r}; restarted?)",
            )
        if req.compat_hash != self.compat.hash():
            raise PullRefused(
                "FAILED_PRECONDITION", f"compat_hash: {req.compat_hash!r} != {self.compat.hash()!r}"
            )
        if req.rank != 0:
            raise PullRefused("NOT_FOUND", f"rank: this worker serves rank 0, not rank {req.rank}")
        heads = int(self.storage.shape[3])
        h0, h1 = req.head_start, req.head_end or heads
        if not 0 <= h0 < h1 <= heads:
            raise PullRefused("INVALID_ARGUMENT", f"head_start/head_end: [{h0}, {h1}) outside [0, {heads})")
        held = self.held.get(req.request_id)
        if held is None:
            raise PullRefused(
                "NOT_FOUND", f"request_id: {req.request_id!r} holds no KV blocks (expired or released)"
            )
        skip = req.skip_blocks
        if skip > len(held.block_ids):
            raise PullRefused(
                "INVALID_ARGUMENT", f"skip_blocks: {skip} but the request holds {len(held.block_ids)} blocks"
            )
        return self._stream(held.block_ids[skip:], h0, h1, skip)

    def _stream(self, block_ids: tuple[int, ...], h0: int, h1: int, skip: int) -> Iterator[pb2.KvChunk]:
        for spec, data in iter_chunks(self.storage, list(block_ids), h0, h1, self.chunk_bytes):
            if self.pull_delay_s:
                time.sleep(self.pull_delay_s)
            self.counters.pulled_bytes += len(data)
            yield pb2.KvChunk(
                layer=spec.layer, block_index=skip + spec.block_index, count=spec.count, data=data
            )

    def poll(self) -> None:
        """Free what the notifications and the TTL say is done (the housekeeping thread's step)."""
        if self.endpoint is not None:
            for message in self.endpoint.take_notifications():
                request_id = parse_done(message)
                if request_id is not None and self.held.release(request_id):
                    self.counters.freed_by_notification += 1
        self.counters.freed_by_ttl += len(self.held.expire(self._clock_ms()))

    def _housekeeping(self) -> None:
        # While blocks are held a decode worker may be READing them: poll often, since on a
        # host-memory agent without a progress thread this poll is what progresses UCX on the
        # prefill side, and a decode worker's next READ waits for this side to acknowledge its
        # last notification (measured: 10-18 ms per READ when that waited for a 20 ms idle
        # tick). Idle, poll rarely (TTL expiry needs no finer grain); issue() wakes it at once.
        while not self._stop.is_set():
            self._wake.wait(HOUSEKEEPING_BUSY_S if len(self.held) else HOUSEKEEPING_IDLE_S)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.poll()
            except Exception:  # keep freeing on later ticks; one bad notification must not stop it
                log.exception("KV source housekeeping")

    def close(self) -> None:
        """Stop housekeeping, free everything held, deregister the pool."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2)
        self.held.release_all()
        if self.endpoint is not None:
            self.endpoint.close()
