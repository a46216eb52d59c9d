"""The decode side of the KV handoff: pull a handle's blocks into this worker's own blocks.

:class:`KvSink` checks nothing about the request itself (the server calls
:func:`baton_worker.kv.handle.check_handle` first); it moves the bytes, by NIXL READ when both
sides run NIXL, else over the ``PullKv`` stream, then tells the prefill side it is done (the
NIXL endpoint posts a done notification once every part of the READ is done; the gRPC path calls
``Release``). Every step runs under
the caller's deadline and failures surface as typed, retryable errors.
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
from baton_worker.kv.layout import PoolGeometry, plan_runs
from baton_worker.kv.nixl_agent import NixlEndpoint, Region, default_read_lanes
from baton_worker.kv.source import storage_region
from baton_worker.rpc import pb2, pb2_grpc
from baton_worker.tls import ChannelCache, TlsFiles

# A handle this close to its expiry is treated as expired (the prefill side may free it mid-READ).
EXPIRY_MARGIN_MS = 250


@dataclass(frozen=True)
class PullResult:
    """What one pull moved, how long it took and which path it used."""

    bytes: int
    seconds: float
    backend: str


def _rpc_error(what: str, exc: grpc.RpcError) -> KvError:
    code = exc.code()
    detail = f"{what}: {code.name}: {exc.details()}"
    if code == grpc.StatusCode.NOT_FOUND:
        return KvExpiredError(detail)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return KvTransferError(detail)
    return KvTransferError(detail)


class KvSink:
    """Pulls KV into one decode rank's pool (TP rank 0 of a TP-1 worker)."""

    def __init__(
        self,
        *,
        storage: torch.Tensor,
        dtype: str,
        backend: str,
        name: str,
        read_lanes: int = 0,
        tls: TlsFiles | None = None,
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
        """Copy the handle's blocks after the first ``skip`` (which this worker already holds)
        into ``dst_blocks`` (same order) before ``deadline`` (time.monotonic()). Raises
        KvTransferError / KvExpiredError (retryable) or KvHandleError / KvCompatError; the caller
        owns ``dst_blocks`` either way."""
        t0 = time.monotonic()
        if len(dst_blocks) + skip != len(handle.block_ids):
            raise KvHandleError(
                "block_ids", f"{len(handle.block_ids)} blocks, {skip} cached + {len(dst_blocks)} allocated"
            )
        now_ms = int(time.time() * 1000)
        if handle.expires_unix_ms - EXPIRY_MARGIN_MS <= now_ms:
            # A one-sided READ of freed blocks would return someone else's KV: refuse instead.
            raise KvExpiredError(
                f"handle of {handle.request_id!r} expired at {handle.expires_unix_ms} (now {now_ms})"
            )
        if not dst_blocks:
            # Every block was cached here: nothing to read, the prefill side may free its copy.
            self.release_remote(handle, deadline)
            return PullResult(0, time.monotonic() - t0, "cache")
        use_nixl = self.endpoint is not None and handle.backend == "nixl"
        moved = (
            self._pull_nixl(handle, dst_blocks, deadline, skip)
            if use_nixl
            else self._pull_grpc(handle, dst_blocks, deadline, skip)
        )
        return PullResult(moved, time.monotonic() - t0, "nixl" if use_nixl else "grpc")

    def _remaining(self, deadline: float, what: str) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise KvTransferError(f"{what}: deadline passed")
        return left

    def _remote_agent(self, handle: pb2.KvHandle, shard: pb2.KvShard, deadline: float) -> str:
        assert self.endpoint is not None
        key = f"{handle.engine_id}/{shard.rank}"
        known = self.endpoint.peer(key)
        if known is not None:
            return known
        what = f"GetAgentMetadata(rank {shard.rank}) at {shard.metadata_address}"
        try:
            meta = self._stub(shard.metadata_address).GetAgentMetadata(
                pb2.AgentMetadataRequest(rank=shard.rank), timeout=self._remaining(deadline, what)
            )
        except grpc.RpcError as exc:
            raise _rpc_error(what, exc) from exc
        check_agent_metadata(meta, handle, shard)
        return self.endpoint.add_peer(key, meta.metadata)

    def _pull_nixl(self, handle: pb2.KvHandle, dst_blocks: list[int], deadline: float, skip: int) -> int:
        assert self.endpoint is not None
        moved = 0
        for shard in handle.shards:
            agent = self._remote_agent(handle, shard, deadline)
            try:
                runs = plan_runs(
                    shard_geometry(handle, shard),
                    list(handle.block_ids)[skip:],
                    shard.head_start,
                    self.geometry,
                    dst_blocks,
                    0,
                    shard.head_start,
                    shard.head_end,
                )
            except ValueError as exc:
                raise KvHandleError(f"shards[rank {shard.rank}]", str(exc)) from None
            remote = Region(shard.base_address, shard.region_bytes, shard.device_id, shard.memory_type)
            # read() posts the done notification once every part of the READ is DONE: prefill
            # frees the blocks then.
            try:
                moved += self.endpoint.read(agent, remote, runs, done_message(handle.request_id), deadline)
            except KvTransferError:
                # The peer may have died or restarted: fetch its metadata afresh next time.
                self.endpoint.forget_peer(f"{handle.engine_id}/{shard.rank}")
                raise
        return moved

    def _pull_grpc(self, handle: pb2.KvHandle, dst_blocks: list[int], deadline: float, skip: int) -> int:
        moved = 0
        for shard in handle.shards:
            what = f"PullKv(rank {shard.rank}) at {shard.metadata_address}"
            req = pb2.PullKvRequest(
                request_id=handle.request_id,
                engine_id=handle.engine_id,
                rank=shard.rank,
                head_start=0,
                head_end=shard.head_end - shard.head_start,
                compat_hash=handle.compat_hash,
                skip_blocks=skip,
            )
            h0 = shard.head_start
            h1 = shard.head_end
            if h1 > self.geometry.num_kv_heads:
                raise KvHandleError(f"shards[rank {shard.rank}]", "heads beyond this pool's local heads")
            expected = len(dst_blocks) * self.geometry.num_layers * 2 * (h1 - h0) * self.geometry.head_bytes
            got = 0
            try:
                stream = self._stub(shard.metadata_address).PullKv(
                    req, timeout=self._remaining(deadline, what)
                )
                for chunk in stream:
                    got += write_chunk(
                        self.storage,
                        dst_blocks,
                        h0,
                        h1,
                        chunk.layer,
                        chunk.block_index - skip,
                        chunk.count,
                        chunk.data,
                    )
            except grpc.RpcError as exc:
                raise _rpc_error(what, exc) from exc
            if got != expected:
                raise KvTransferError(f"{what}: stream ended after {got} of {expected} bytes")
            moved += got
        self.release_remote(handle, deadline)
        return moved

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
