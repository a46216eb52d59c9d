"""The prefill side of one tensor-parallel rank: its KV shard registered with NIXL, and a gRPC
endpoint answering ``GetAgentMetadata`` for it, so that decode ranks read the shard directly
(no gather through rank 0). Decode ranks pull with :class:`baton_worker.kv.sink.KvSink`.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent import futures

import grpc
import torch

from baton_worker.kv.errors import KvTransferError
from baton_worker.kv.handle import ShardInfo
from baton_worker.kv.nixl_agent import NixlEndpoint
from baton_worker.kv.source import storage_region
from baton_worker.kv.tp_plan import HeadRange
from baton_worker.rpc import pb2, pb2_grpc
from baton_worker.tls import add_port, from_env

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


class RankSource:
    """One prefill rank's KV shard: a NIXL agent over the rank's pool tensor and a gRPC server
    answering ``GetAgentMetadata`` for this rank."""

    def __init__(
        self,
        *,
        name: str,
        rank: int,
        storage: torch.Tensor,
        engine_id: str,
        compat_hash: str,
        bind_host: str = "127.0.0.1",
        advertise_host: str = "",
    ) -> None:
        self.rank = rank
        self.region = storage_region(storage)
        # NIXL's progress thread polls (~0.4 core per idle agent): a CPU host running N ranks
        # cannot afford it. A READ target must still make progress to serve it; polling for
        # notifications does that at a fraction of the progress thread's cost.
        progress_thread = storage.device.type == "cuda"
        self.endpoint = NixlEndpoint(name, self.region, progress_thread=progress_thread)
        self._stop = threading.Event()
        self._progress: threading.Thread | None = None
        if not progress_thread:
            self._progress = threading.Thread(target=self._poll, name=f"kv-progress-r{rank}", daemon=True)
            self._progress.start()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb2_grpc.add_PrefillWorkerServicer_to_server(
            _MetadataServicer(rank, name, self.endpoint.metadata, compat_hash, engine_id), self._server
        )
        # With the worker's --tls-dir (inherited through the environment): mutual TLS.
        port = add_port(self._server, f"{bind_host}:0", from_env())
        if port == 0:
            raise KvTransferError(f"rank {rank}: cannot bind a metadata port on {bind_host}")
        self._server.start()
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

    def close(self) -> None:
        """Stop the metadata server and deregister the pool."""
        self._stop.set()
        if self._progress is not None:
            self._progress.join(1.0)
        self._server.stop(grace=None)
        self.endpoint.close()
