"""One rank of a tensor-parallel worker group: what it is told (:class:`TpSpec`), what it holds
(:class:`RankState`: its model shard, its KV pool shard and its KV transfer endpoint) and what
it runs when rank 0 announces a step. :mod:`baton_worker.engine.tp_group` starts and drives the
ranks; every rank, rank 0 included, builds itself with :func:`build_rank`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from baton_worker.engine.kv_pool import KvBlockPool
from baton_worker.engine.loader import LoadedModel, load_model, model_shape, resolve_source
from baton_worker.engine.model import PagedModel
from baton_worker.engine.tp import TpRank, init_rank, shard_model
from baton_worker.kv.tp_plan import check_tp_size

if TYPE_CHECKING:
    from baton_worker.kv.rank_source import RankSource
    from baton_worker.kv.sink import KvSink


class TpGroupError(RuntimeError):
    """A rank failed to start, died, or did not answer in time (names the rank)."""


@dataclass(frozen=True)
class TpSpec:
    """Everything a rank needs to build its share of a worker (JSON-serialisable)."""

    source: str
    tp_size: int
    role: str  # "prefill" | "decode"
    engine_id: str
    dtype: str = "float32"
    device: str = "cpu"  # "cpu", or "cuda": rank r uses cuda:r
    num_blocks: int = 256
    block_size: int = 16
    max_model_len: int | None = None
    nixl: bool = True  # register each rank's pool with NIXL (needed for pulls)
    threads: int = 1  # torch intra-op threads per rank on CPU
    timeout_s: float = 120.0  # start-up, collectives and replies
    bind_host: str = "127.0.0.1"  # where ranks serve their NIXL agent metadata
    advertise_host: str = ""  # the host put in KvShard.metadata_address (default: bind_host)
    rank0_kv: bool = True  # False: rank 0's KV shard is registered by the caller (KvSource)
    served_name: str = ""  # the model name in the compatibility hash (default: source)

    def rank_device(self, rank: int) -> torch.device:
        return torch.device(f"cuda:{rank}") if self.device.startswith("cuda") else torch.device("cpu")


@dataclass(frozen=True)
class PullCommand:
    handle: bytes  # a serialised pb2.KvHandle
    dst_blocks: list[int]
    timeout_s: float


class RankState:
    """What one rank holds: its model shard, its KV pool shard and its transfer endpoint."""

    def __init__(self, spec: TpSpec, rank: int, global_model: LoadedModel) -> None:
        from baton_worker.kv.handle import CompatInfo

        self.spec = spec
        self.tp = TpRank(rank, spec.tp_size, global_model.shape)
        self.compat = CompatInfo(
            model=spec.served_name or spec.source,
            revision=global_model.fingerprint,
            dtype=global_model.dtype_name,
            num_layers=global_model.shape.num_layers,
            num_kv_heads=global_model.shape.num_kv_heads,
            head_dim=global_model.shape.head_dim,
            block_size=spec.block_size,
        )
        local = shard_model(global_model, rank, spec.tp_size)
        device = spec.rank_device(rank)
        if device != local.device:
            local.hf_model.to(device)
            local = dataclasses.replace(local, device=device)
        self.model = local
        self.pool = KvBlockPool.for_model(local, num_blocks=spec.num_blocks, block_size=spec.block_size)
        self.paged = PagedModel(local, self.pool)
        # Prefill ranks serve their KV shard; decode ranks pull their own heads of it.
        self.kv_source: RankSource | None = None
        self.kv_sink: KvSink | None = None
        if spec.nixl and (rank > 0 or spec.rank0_kv):
            self._open_kv(rank)

    def _open_kv(self, rank: int) -> None:
        name = f"{self.spec.engine_id}-{self.spec.role}-r{rank}"
        if self.spec.role == "prefill":
            from baton_worker.kv.rank_source import RankSource

            self.kv_source = RankSource(
                name=name,
                rank=rank,
                storage=self.pool.storage,
                engine_id=self.spec.engine_id,
                compat_hash=self.compat.hash(),
                bind_host=self.spec.bind_host,
                advertise_host=self.spec.advertise_host,
            )
            return
        from baton_worker.kv.sink import HeadShare, KvSink
        from baton_worker.tls import from_env

        self.kv_sink = KvSink(
            storage=self.pool.storage,
            dtype=self.model.dtype_name,
            backend="nixl",
            name=name,
            read_lanes=1,  # N ranks read at once already
            tls=from_env(),  # the worker's --tls-dir, inherited through the environment
            share=HeadShare(rank, self.tp.kv_heads, self.compat.num_kv_heads),
            releases=False,  # rank 0's caller releases once every rank has read
        )

    def shard_info(self) -> Any:
        """This prefill rank's ShardInfo (None when this rank serves no KV shard itself)."""
        src = self.kv_source
        return None if src is None else src.shard_info(self.tp.kv_heads, self.pool.num_blocks)

    def pull(self, cmd: PullCommand) -> Any:
        """Pull this rank's KV heads of ``cmd.handle`` into ``cmd.dst_blocks``; a PullResult."""
        from baton_worker.rpc import pb2

        if self.kv_sink is None:
            raise TpGroupError(f"rank {self.tp.rank}: pulls need NIXL (TpSpec.nixl) on a decode rank")
        handle = pb2.KvHandle.FromString(cmd.handle)
        return self.kv_sink.pull(handle, cmd.dst_blocks, time.monotonic() + cmd.timeout_s)

    def run(self, cmd: tuple) -> Any:
        kind = cmd[0]
        if kind == "prefill":
            self.paged.prefill(*cmd[1:])
            return None
        if kind == "decode":
            self.paged.decode(*(torch.tensor(v, dtype=torch.long) for v in cmd[1:]))
            return None
        if kind == "pull":
            return self.pull(cmd[1])
        raise TpGroupError(f"rank {self.tp.rank}: unknown command {kind!r}")

    def close(self) -> None:
        for kv in (self.kv_source, self.kv_sink):
            if kv is not None:
                kv.close()


def check_spec(spec: TpSpec) -> None:
    """Refuse, before any process starts, a group that cannot work: TpConfigError naming the TP
    size and the model's head counts, or ValueError for missing GPUs / a bad role."""
    from transformers import AutoConfig

    if spec.role not in ("prefill", "decode"):
        raise ValueError(f"role: {spec.role!r} is not prefill or decode")
    config = AutoConfig.from_pretrained(resolve_source(spec.source))
    shape = model_shape(config)
    inter = getattr(config, "intermediate_size", None)
    check_tp_size("tensorParallelSize", spec.tp_size, shape.num_kv_heads, shape.num_attention_heads, inter)
    if spec.device.startswith("cuda") and torch.cuda.device_count() < spec.tp_size:
        raise ValueError(
            f"tensorParallelSize: {spec.tp_size} ranks need {spec.tp_size} GPUs, "
            f"this machine has {torch.cuda.device_count()}"
        )


def build_rank(spec: TpSpec, rank: int, init_file: str) -> RankState:
    """Join the group, load the model, keep this rank's shard (the same steps on every rank)."""
    if spec.rank_device(rank).type == "cpu":
        torch.set_num_threads(spec.threads)
    init_rank(init_file, rank, spec.tp_size, spec.rank_device(rank), spec.timeout_s)
    # Loaded on the CPU and sharded there, so a GPU only ever holds its own share.
    model = load_model(spec.source, dtype=spec.dtype, device="cpu", max_model_len=spec.max_model_len)
    return RankState(spec, rank, model)
