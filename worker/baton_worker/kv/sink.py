"""The decode side of the KV handoff: pull a handle's blocks into this worker's own blocks.

One path serves every layout. A decode pool holds a contiguous share of the model's KV heads
(all of them on a TP-1 worker, rank ``r``'s share on a TP worker); :func:`plan_rank_pulls`
says which head range to read from which prefill rank, and each range is read directly from
that rank, by NIXL READ when both sides run NIXL, else over the ``PullKv`` stream. Equal TP
layouts are the case where every read is a whole shard.

:class:`KvSink` checks nothing about the request itself (the server calls
:func:`baton_worker.kv.handle.check_handle` first). Once the bytes have moved it tells the prefill
side it is done, unless the caller does that (a TP decode worker, after its last rank): each
NIXL READ posts a done notification to its prefill rank, a ``PullKv`` pull ends with
``Release``. Every step runs under the caller's deadline and failures surface as typed,
retryable errors.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import grpc
import torch

from baton_worker.kv.errors import (
    KvCompatError,
    KvError,
    KvExpiredError,
    KvHandleError,
    KvTransferError,
)
from baton_worker.kv.grpc_stream import GRPC_OPTIONS, write_chunk
from baton_worker.kv.handle import shard_geometry
from baton_worker.kv.held import done_message
from baton_worker.kv.layout import PoolGeometry, Run, plan_runs
from baton_worker.kv.nixl_agent import NixlEndpoint, Region, default_read_lanes
from baton_worker.kv.source import storage_region
from baton_worker.kv.tp_plan import HeadRange, ShardPull, plan_rank_pulls
from baton_worker.rpc import pb2, pb2_grpc
from baton_worker.tls import ChannelCache, TlsFiles

# A handle this close to its expiry is treated as expired (the prefill side may free it mid-READ).
EXPIRY_MARGIN_MS = 250


@dataclass(frozen=True)
class PullResult:
    """What one pull moved, how long it took, which path it used (``nixl``, ``grpc``, or
    ``cache`` when every block was held here already), from how many prefill ranks, and which
    decode rank pulled."""

    bytes: int
    seconds: float
    backend: str
    sources: int = 0
    rank: int = 0


@dataclass(frozen=True)
class HeadShare:
    """The KV heads a decode pool holds: ``heads`` of the model's ``total``, as TP rank ``rank``."""

    rank: int
    heads: HeadRange
    total: int


@dataclass(frozen=True)
class _Pull:
    """One pull: the handle, where its blocks after the first ``skip`` go, and by when."""

    handle: pb2.KvHandle
    dst_blocks: list[int]
    skip: int
    deadline: float


def _rpc_error(what: str, exc: grpc.RpcError) -> KvError:
    code = exc.code()
    detail = f"{what}: {code.name}: {exc.details()}"
    if code == grpc.StatusCode.NOT_FOUND:
        return KvExpiredError(detail)
    return KvTransferError(detail)


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise KvTransferError(f"{what}: deadline passed")
    return left


class KvSink:
    """Pulls KV into one decode pool: a TP-1 worker's, or one rank's of a TP worker (``share``).

    ``releases`` False leaves telling the prefill side to the caller: a TP decode worker's
    prefill blocks may be freed only after its last rank has read."""

    def __init__(
        self,
        *,
        storage: torch.Tensor,
        dtype: str,
        backend: str,
        name: str,
        read_lanes: int = 0,
        tls: TlsFiles | None = None,
        share: HeadShare | None = None,
        releases: bool = True,
    ) -> None:
        if backend not in ("nixl", "grpc"):
            raise ValueError(f"backend must be 'nixl' or 'grpc', got {backend!r}")
        self.storage = storage
        self.backend = backend
        self.geometry = PoolGeometry(
            num_layers=int(storage.shape[0]),
            num_blocks=int(storage.shape[1]),
            num_kv_heads=int(storage.shape[3]),
            block_size=int(storage.shape[4]),
            head_dim=int(storage.shape[5]),
            dtype=dtype,
        )
        heads = self.geometry.num_kv_heads
        self.share = share or HeadShare(0, HeadRange(0, heads), heads)
        if self.share.heads.count != heads:
            raise ValueError(f"share: {self.share.heads} is not the pool's {heads} KV heads")
        self.releases = releases
        self.endpoint: NixlEndpoint | None = None
        if backend == "nixl":
            region = storage_region(storage)
            lanes = read_lanes or default_read_lanes(region.memory_type)  # 0: auto
            self.endpoint = NixlEndpoint(name, region, read_lanes=lanes)
        # To the prefill workers (mutual TLS with ``tls``; new channels when its files change).
        self._channels = ChannelCache(tls, GRPC_OPTIONS)

    def _stub(self, address: str) -> pb2_grpc.PrefillWorkerStub:
        return pb2_grpc.PrefillWorkerStub(self._channels.get(address))

    # Whether pull() can leave out leading blocks this worker already holds (prefix cache).
    supports_skip = True

    def pull(self, handle: pb2.KvHandle, dst_blocks: list[int], deadline: float, skip: int = 0) -> PullResult:
        """Copy this pool's heads of the handle's blocks after the first ``skip`` (which this
        worker already holds) into ``dst_blocks`` (same order) before ``deadline``
        (time.monotonic()). Raises KvTransferError / KvExpiredError (retryable) or KvHandleError /
        KvCompatError; the caller owns ``dst_blocks`` either way."""
        t0 = time.monotonic()
        check_pullable(handle, len(dst_blocks), skip, int(time.time() * 1000))
        if not dst_blocks:
            # Every block was cached here: nothing to read, the prefill side may free its copy.
            if self.releases:
                self.release_remote(handle, deadline)
            return PullResult(0, time.monotonic() - t0, "cache", 0, self.share.rank)
        reads = self._plan(handle)
        pull = _Pull(handle, dst_blocks, skip, deadline)
        if self.endpoint is not None and handle.backend == "nixl":
            # Each READ tells its prefill rank when it is done; only rank 0 frees on that, and
            # the handle lists it last, so the blocks outlive every READ of this pull.
            moved = sum(self._read_nixl(pull, shard, part, self.releases) for shard, part in reads)
            backend = "nixl"
        else:
            moved = sum(self._read_grpc(pull, shard, part) for shard, part in reads)
            backend = "grpc"
            if self.releases:
                self.release_remote(handle, deadline)
        return PullResult(moved, time.monotonic() - t0, backend, len(reads), self.share.rank)

    def _plan(self, handle: pb2.KvHandle) -> list[tuple[pb2.KvShard, ShardPull]]:
        """Which head range of which prefill shard fills this pool's heads (KvHandleError when
        the shards do not cover them, or describe a model with other heads)."""
        if handle.layout.num_kv_heads != self.share.total:
            raise KvHandleError(
                "layout.num_kv_heads",
                f"{handle.layout.num_kv_heads}, this worker's model has {self.share.total}",
            )
        try:
            pulls = plan_rank_pulls(
                [(s.rank, s.head_start, s.head_end) for s in handle.shards], self.share.heads
            )
        except ValueError as exc:
            raise KvHandleError("shards", str(exc)) from None
        by_rank = {p.src_rank: p for p in pulls}
        # In handle order, which puts the shard whose done notification frees the blocks last.
        return [(s, by_rank[s.rank]) for s in handle.shards if s.rank in by_rank]

    def remote_agent(self, handle: pb2.KvHandle, shard: pb2.KvShard, deadline: float) -> str:
        """The NIXL agent of a prefill shard, its metadata fetched and checked on first contact."""
        assert self.endpoint is not None
        key = f"{handle.engine_id}/{shard.rank}"
        known = self.endpoint.peer(key)
        if known is not None:
            return known
        what = f"GetAgentMetadata(rank {shard.rank}) at {shard.metadata_address}"
        try:
            meta = self._stub(shard.metadata_address).GetAgentMetadata(
                pb2.AgentMetadataRequest(rank=shard.rank), timeout=_remaining(deadline, what)
            )
        except grpc.RpcError as exc:
            raise _rpc_error(what, exc) from exc
        check_agent_metadata(meta, handle, shard)
        return self.endpoint.add_peer(key, meta.metadata)

    def _runs(self, pull: _Pull, shard: pb2.KvShard, part: ShardPull) -> list[Run]:
        try:
            return plan_runs(
                shard_geometry(pull.handle, shard),
                list(pull.handle.block_ids)[pull.skip :],
                shard.head_start,
                self.geometry,
                pull.dst_blocks,
                self.share.heads.start,
                part.heads.start,
                part.heads.end,
            )
        except ValueError as exc:
            raise KvHandleError(f"shards[rank {shard.rank}]", str(exc)) from None

    def _read_nixl(self, pull: _Pull, shard: pb2.KvShard, part: ShardPull, notify: bool) -> int:
        assert self.endpoint is not None
        handle = pull.handle
        agent = self.remote_agent(handle, shard, pull.deadline)
        runs = self._runs(pull, shard, part)
        remote = Region(shard.base_address, shard.region_bytes, shard.device_id, shard.memory_type)
        # read() posts the notification once every part of the READ is DONE.
        message = done_message(handle.request_id) if notify else b""
        try:
            return self.endpoint.read(agent, remote, runs, message, pull.deadline)
        except KvTransferError:
            # The peer may have died or restarted: fetch its metadata afresh next time.
            self.endpoint.forget_peer(f"{handle.engine_id}/{shard.rank}")
            raise

    def _read_grpc(self, pull: _Pull, shard: pb2.KvShard, part: ShardPull) -> int:
        what = f"PullKv(rank {shard.rank}) at {shard.metadata_address}"
        req = pb2.PullKvRequest(
            request_id=pull.handle.request_id,
            engine_id=pull.handle.engine_id,
            rank=shard.rank,
            head_start=part.heads.start - shard.head_start,
            head_end=part.heads.end - shard.head_start,
            compat_hash=pull.handle.compat_hash,
            skip_blocks=pull.skip,
        )
        h0 = part.heads.start - self.share.heads.start
        h1 = h0 + part.heads.count
        geo = self.geometry
        expected = len(pull.dst_blocks) * geo.num_layers * 2 * (h1 - h0) * geo.head_bytes
        got = 0
        try:
            stream = self._stub(shard.metadata_address).PullKv(req, timeout=_remaining(pull.deadline, what))
            for c in stream:
                index = c.block_index - pull.skip
                got += write_chunk(self.storage, pull.dst_blocks, h0, h1, c.layer, index, c.count, c.data)
        except grpc.RpcError as exc:
            raise _rpc_error(what, exc) from exc
        if got != expected:
            raise KvTransferError(f"{what}: stream ended after {got} of {expected} bytes")
        return got

    def release_remote(self, handle: pb2.KvHandle, deadline: float) -> bool:
        """Tell the prefill worker to free the handle's blocks now (best effort, short deadline)."""
        try:
            timeout = max(0.05, min(2.0, deadline - time.monotonic()))
            reply = self._stub(handle.prefill_address).Release(
                pb2.ReleaseRequest(request_id=handle.request_id, engine_id=handle.engine_id), timeout=timeout
            )
            return bool(reply.released)
        except grpc.RpcError:
            return False  # it frees them on its TTL anyway

    def close(self) -> None:
        self._channels.close()
        if self.endpoint is not None:
            self.endpoint.close()


def check_pullable(handle: pb2.KvHandle, num_dst: int, skip: int, now_ms: int) -> None:
    """Refuse a pull whose blocks do not add up (KvHandleError) or whose handle is about to
    expire (KvExpiredError: a one-sided READ of freed blocks would return someone else's KV)."""
    if num_dst + skip != len(handle.block_ids):
        raise KvHandleError(
            "block_ids", f"{len(handle.block_ids)} blocks, {skip} cached + {num_dst} allocated"
        )
    if handle.expires_unix_ms - EXPIRY_MARGIN_MS <= now_ms:
        raise KvExpiredError(
            f"handle of {handle.request_id!r} expired at {handle.expires_unix_ms} (now {now_ms})"
        )


def check_agent_metadata(meta: pb2.AgentMetadata, handle: pb2.KvHandle, shard: pb2.KvShard) -> None:
    """Refuse agent metadata that is truncated/corrupted or from another engine (typed errors)."""
    if meta.engine_id != handle.engine_id:
        # The prefill worker restarted since it issued the handle: its blocks are gone.
        raise KvExpiredError(
            f"prefill rank {shard.rank} is engine {meta.engine_id!r}, the handle names {handle.engine_id!r}"
        )
    if meta.compat_hash != handle.compat_hash:
        raise KvCompatError({"compat_hash": (meta.compat_hash, handle.compat_hash)})
    if meta.agent_name != shard.agent_name:
        raise KvHandleError(
            f"shards[rank {shard.rank}].agent_name",
            f"{shard.agent_name!r} but the rank serves {meta.agent_name!r}",
        )
    if not meta.metadata:
        raise KvHandleError("AgentMetadata.metadata", "empty")
    if meta.metadata_sha256 and hashlib.sha256(meta.metadata).hexdigest() != meta.metadata_sha256:
        raise KvHandleError(
            "AgentMetadata.metadata",
            f"{len(meta.metadata)} bytes do not match metadata_sha256 (truncated or corrupted)",
        )
