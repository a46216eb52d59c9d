"""`baton worker --tensor-parallel-size N`: the pieces that turn a worker into rank 0 of a TP group.

The worker process is rank 0: it starts ranks 1..N-1 (:class:`~baton_worker.engine.tp_group.TpGroup`),
serves gRPC exactly as a TP-1 worker does, and runs every forward on all ranks. Prefill: rank 0's
KV shard is registered by the :class:`~baton_worker.kv.source.KvSource` as usual, and the other
ranks' shards (each registered with NIXL by its own rank, each serving its own agent metadata)
are added to every handle. Decode: :class:`TpSink` has every rank pull its own KV heads directly
from the prefill ranks that hold them, then releases the prefill blocks with ``Release``.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from baton_worker.engine.loader import LoadedModel
from baton_worker.engine.tp_group import TpGroup, TpSpec
from baton_worker.kv.errors import KvError, KvTransferError
from baton_worker.kv.sink import KvSink, PullResult
from baton_worker.rpc import pb2


def launch_worker_group(opts: Any, backend: str) -> TpGroup:
    """Start the TP group of a worker (``opts`` is its WorkerOptions); ValueError naming the flag
    when the KV backend cannot serve per-rank shards, TpConfigError naming the numbers when the
    model cannot be split ``--tensor-parallel-size`` ways."""
    if backend != "nixl":
        raise ValueError(
            f"--kv-backend: tensor parallelism needs nixl (every rank registers its own KV shard), "
            f"got {backend!r}"
        )
    spec = TpSpec(
        source=opts.model,
        tp_size=opts.tensor_parallel_size,
        role=opts.role,
        # Random from the first character: agent names are derived from a prefix of it.
        engine_id=uuid.uuid4().hex,
        dtype=opts.dtype,
        device=opts.device,
        num_blocks=opts.kv_blocks,
        block_size=opts.block_size,
        max_model_len=opts.max_model_len,
        nixl=True,
        threads=opts.threads or 1,
        bind_host=opts.host,
        advertise_host=opts.advertise_host,
        # A prefill worker's rank 0 shard is registered and served by its KvSource.
        rank0_kv=opts.role == "decode",
        served_name=opts.served_model_name,  # every rank's metadata carries the worker's compat hash
    )
    return TpGroup.launch(spec)


def global_model(group: TpGroup) -> LoadedModel:
    """Rank 0's model with the unsharded shape: what the compatibility hash must describe."""
    return dataclasses.replace(group.model, shape=group.rank0.tp.global_shape)


class TpSink:
    """The decode server's KvSink for a TP-M decode worker (same ``pull``/``release_remote``)."""

    def __init__(self, group: TpGroup, release_via: KvSink) -> None:
        self.group = group
        self._release = release_via  # a grpc-backend KvSink: its Release call and channels

    # Every rank pulls the whole handle: the decode-side prefix cache is not consulted.
    supports_skip = False

    def pull(self, handle: pb2.KvHandle, dst_blocks: list[int], deadline: float, skip: int = 0) -> PullResult:
        """Every decode rank pulls its heads at once; then the prefill blocks are released (no
        rank's READ carries the done notification: the prefill side must not free before the
        last rank has read). Raises KvTransferError (retryable) on any rank's failure."""
        if skip:
            raise ValueError("skip: a TP decode worker pulls every block of a handle")
        t0 = time.monotonic()
        try:
            results = self.group.pull(
                handle.SerializeToString(), dst_blocks, max(0.05, deadline - time.monotonic())
            )
        except KvError:
            raise
        except Exception as exc:
            raise KvTransferError(f"TP pull: {exc}") from exc
        self._release.release_remote(handle, deadline)
        return PullResult(sum(r.bytes for r in results), time.monotonic() - t0, "nixl")

    def release_remote(self, handle: pb2.KvHandle, deadline: float) -> bool:
        return self._release.release_remote(handle, deadline)

    def close(self) -> None:
        self._release.close()
