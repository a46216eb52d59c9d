"""Per-rank KV transfer of a tensor-parallel worker: every rank registers its own KV shard, a
prefill rank serves its own NIXL agent metadata, and a decode rank pulls exactly the head ranges
it needs from every prefill rank directly (no gather through rank 0).

The control side is pure (:mod:`baton_worker.kv.tp_plan` picks the reads,
:func:`baton_worker.kv.layout.plan_runs` turns them into byte runs); this module only wires them
to NIXL READs and to the per-rank ``GetAgentMetadata`` gRPC endpoint named in each
``KvShard.metadata_address``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
import torch

from baton_worker.kv.errors import KvHandleError, KvTransferError
from baton_worker.kv.handle import ShardInfo, shard_geometry
from baton_worker.kv.layout import PoolGeometry, plan_runs
from baton_worker.kv.nixl_agent import NixlEndpoint, Region
from baton_worker.kv.sink import check_agent_metadata
from baton_worker.kv.source import storage_region
from baton_worker.kv.tp_plan import HeadRange, plan_rank_pulls
from baton_worker.rpc import pb2, pb2_grpc
from baton_worker.tls import add_port, channel, from_env

PROGRESS_POLL_S = 0.002


class _MetadataServicer(pb2_grpc.PrefillWorkerServicer):
    """Answers GetAgentMetadata for one rank; every other PrefillWorker call is rank 0's job."""

    def __init__(self, rank: int, agent_name: str, metadata: bytes, compat_hash: str, engine_id: str) -> None:
        self._rank = rank
        self._reply = pb2.AgentMetadata(
            agent_name=agent_name,
            metadata=metadata,
            compat_hash=compat_hash,
            engine_id=engine_id,
            metadata_sha256=hashlib.sha256(metadata).hexdigest(),
        )

    def GetAgentMetadata(self, request: pb2.AgentMetadataRequest, context: grpc.ServicerContext):  # noqa: N802
        if request.rank != self._rank:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"rank: this endpoint serves TP rank {self._rank}, not rank {request.rank}",
            )
        return self._reply


@dataclass(frozen=True)
class PullResult:
    """What one decode rank moved: bytes and seconds, and from how many prefill ranks."""

    rank: int
    bytes: int
    seconds: float
    sources: int


class RankKv:
    """One rank's KV transfer endpoint: a NIXL agent over the rank's pool tensor and, for a
    prefill rank, a gRPC server answering ``GetAgentMetadata`` for this rank."""

    def __init__(
        self,
        *,
        name: str,
        rank: int,
        storage: torch.Tensor,
        engine_id: str,
        compat_hash: str,
        serve_metadata: bool,
        bind_host: str = "127.0.0.1",
        advertise_host: str = "",
        progress_thread: bool | None = None,
    ) -> None:
        self.rank = rank
        self.region = storage_region(storage)
        # NIXL's progress thread polls (~0.4 core per idle agent): a CPU host running N ranks
        # cannot afford it, and READs progress in read()'s status checks without it.
        if progress_thread is None:
            progress_thread = storage.device.type == "cuda"
        self.endpoint = NixlEndpoint(name, self.region, progress_thread=progress_thread)
        self.metadata_address = ""
        self._server: grpc.Server | None = None
        self._stop = threading.Event()
        self._progress: threading.Thread | None = None
        if serve_metadata and not progress_thread:
            # A READ target must make progress to serve it; polling for notifications does that
            # at a fraction of the progress thread's cost.
            self._progress = threading.Thread(target=self._poll, name=f"kv-progress-r{rank}", daemon=True)
            self._progress.start()
        if serve_metadata:
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            pb2_grpc.add_PrefillWorkerServicer_to_server(
                _MetadataServicer(rank, name, self.endpoint.metadata, compat_hash, engine_id), server
            )
            # With the worker's --tls-dir (inherited through the environment): mutual TLS.
            port = add_port(server, f"{bind_host}:0", from_env())
            if port == 0:
                raise KvTransferError(f"rank {rank}: cannot bind a metadata port on {bind_host}")
            server.start()
            self._server = server
            host = advertise_host or bind_host
            host = f"[{host}]" if ":" in host else host
            self.metadata_address = f"{host}:{port}"

    def _poll(self) -> None:
        while not self._stop.wait(PROGRESS_POLL_S):
            self.endpoint.take_notifications()

    def shard_info(self, heads: HeadRange, num_blocks: int) -> ShardInfo:
        """This rank's entry in a KvHandle's ``shards``."""
        return ShardInfo(
            rank=self.rank,
            head_start=heads.start,
            head_end=heads.end,
            agent_name=self.endpoint.name,
            metadata_address=self.metadata_address,
            base_address=self.region.address,
            region_bytes=self.region.length,
            num_blocks_total=num_blocks,
            device_id=self.region.device_id,
            memory_type=self.region.memory_type,
        )

    def _remote_agent(self, handle: pb2.KvHandle, shard: pb2.KvShard, deadline: float) -> str:
        key = f"{handle.engine_id}/{shard.rank}"
        known = self.endpoint.peer(key)
        if known is not None:
            return known
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KvTransferError(f"no time left to fetch the metadata of prefill rank {shard.rank}")
        try:
            with channel(shard.metadata_address, from_env()) as ch:
                meta = pb2_grpc.PrefillWorkerStub(ch).GetAgentMetadata(
                    pb2.AgentMetadataRequest(rank=shard.rank), timeout=remaining
                )
        except grpc.RpcError as exc:
            raise KvTransferError(
                f"GetAgentMetadata(rank {shard.rank}) at {shard.metadata_address}: {exc.code().name}: "
                f"{exc.details()}"
            ) from exc
        check_agent_metadata(meta, handle, shard)
        return self.endpoint.add_peer(key, meta.metadata)

    def pull(
        self,
        handle: pb2.KvHandle,
        wanted: HeadRange,
        local: PoolGeometry,
        dst_blocks: list[int],
        deadline: float,
    ) -> PullResult:
        """READ global KV heads ``wanted`` of the handle's blocks into ``dst_blocks`` of this
        rank's pool (whose geometry is ``local`` and whose first head is ``wanted.start``),
        directly from every prefill rank holding some of them. Raises KvTransferError on a failed
        or late READ, KvHandleError / KvCompatError for a handle that does not fit."""
        t0 = time.monotonic()
        shards = {s.rank: s for s in handle.shards}
        try:
            pulls = plan_rank_pulls([(s.rank, s.head_start, s.head_end) for s in handle.shards], wanted)
        except ValueError as exc:
            raise KvHandleError("shards", str(exc)) from None
        moved = 0
        for p in pulls:
            shard = shards[p.src_rank]
            agent = self._remote_agent(handle, shard, deadline)
            try:
                runs = plan_runs(
                    shard_geometry(handle, shard),
                    list(handle.block_ids),
                    shard.head_start,
                    local,
                    dst_blocks,
                    wanted.start,
                    p.heads.start,
                    p.heads.end,
                )
            except ValueError as exc:
                raise KvHandleError(f"shards[rank {shard.rank}]", str(exc)) from None
            remote = Region(shard.base_address, shard.region_bytes, shard.device_id, shard.memory_type)
            try:
                moved += self.endpoint.read(agent, remote, runs, b"", deadline)
            except KvTransferError:
                # The peer may have died or restarted: fetch its metadata afresh next time.
                self.endpoint.forget_peer(f"{handle.engine_id}/{shard.rank}")
                raise
        return PullResult(self.rank, moved, time.monotonic() - t0, len(pulls))

    def close(self) -> None:
        """Stop the metadata server and deregister the pool."""
        self._stop.set()
        if self._progress is not None:
            self._progress.join(1.0)
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None
        self.endpoint.close()
