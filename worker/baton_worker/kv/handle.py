"""KV handles: the compatibility hash, building a handle, and validating one that arrived.

Everything here is pure (protobuf messages in, messages or typed errors out). Decode calls
:func:`check_handle` before touching any bytes: it refuses a malformed or truncated handle
with :class:`KvHandleError` naming the field, and an incompatible one with
:class:`KvCompatError` naming both sides' values.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import asdict, dataclass

from baton_worker.kv.errors import KvCompatError, KvHandleError
from baton_worker.kv.layout import DTYPE_ITEMSIZE, LAYOUT_NAME, PoolGeometry, blocks_needed
from baton_worker.rpc import WIRE_VERSION, pb2

BACKENDS = ("nixl", "grpc")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):\d{1,5}$")


@dataclass(frozen=True)
class CompatInfo:
    """What must match between prefill and decode for KV bytes to mean the same thing."""

    model: str
    revision: str
    dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    layout: str = LAYOUT_NAME
    protocol_version: int = WIRE_VERSION

    def fields_json(self) -> str:
        """Canonical JSON of the fields (sorted keys, no spaces): the hashed text."""
        return _fields_json(self)

    def hash(self) -> str:
        """sha256 hex digest of :meth:`fields_json`."""
        return _compat_hash(self)


# A worker has one CompatInfo and sees a handful of peers' ones: every handle it issues or
# checks would otherwise redo the same JSON and sha256 (measured: half of the ~0.2 ms that
# issuing plus checking a handle took).
@functools.lru_cache(maxsize=64)
def _fields_json(compat: CompatInfo) -> str:
    return json.dumps(asdict(compat), sort_keys=True, separators=(",", ":"))


@functools.lru_cache(maxsize=64)
def _compat_hash(compat: CompatInfo) -> str:
    return hashlib.sha256(_fields_json(compat).encode()).hexdigest()


@functools.lru_cache(maxsize=256)
def _announced_fields(compat_fields: str, compat_hash: str) -> dict:
    """The fields a handle announces, once they are known to hash to its ``compat_hash``;
    raises KvHandleError (not cached) otherwise. Callers must not modify the result."""
    try:
        theirs = json.loads(compat_fields)
        if not isinstance(theirs, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise KvHandleError("compat_fields", f"not a JSON object ({exc})") from None
    canonical = json.dumps(theirs, sort_keys=True, separators=(",", ":"))
    if hashlib.sha256(canonical.encode()).hexdigest() != compat_hash:
        raise KvHandleError("compat_hash", "does not match compat_fields (corrupted handle)")
    return theirs


@dataclass(frozen=True)
class ShardInfo:
    """One prefill rank's registered pool, as announced in a handle."""

    rank: int
    head_start: int
    head_end: int
    agent_name: str
    metadata_address: str
    base_address: int
    region_bytes: int
    num_blocks_total: int
    device_id: int = 0
    memory_type: str = "DRAM"


def build_handle(
    *,
    request_id: str,
    engine_id: str,
    compat: CompatInfo,
    num_tokens: int,
    shards: list[ShardInfo],
    block_ids: list[int],
    prefill_address: str,
    expires_unix_ms: int,
    backend: str,
) -> pb2.KvHandle:
    """Return the KvHandle message announcing a request's blocks held by a prefill worker."""
    handle = pb2.KvHandle.FromString(
        _handle_template(engine_id, compat, tuple(shards), prefill_address, backend)
    )
    handle.request_id = request_id
    handle.layout.num_tokens = num_tokens
    handle.block_ids.extend(block_ids)
    handle.expires_unix_ms = expires_unix_ms
    return handle


# What a worker's handles share (all but the request, its blocks and its expiry), encoded once:
# parsing it back is cheaper than building the nested messages for every handle.
@functools.lru_cache(maxsize=64)
def _handle_template(
    engine_id: str, compat: CompatInfo, shards: tuple[ShardInfo, ...], prefill_address: str, backend: str
) -> bytes:
    return pb2.KvHandle(
        engine_id=engine_id,
        compat_hash=compat.hash(),
        protocol_version=compat.protocol_version,
        layout=pb2.KvLayout(
            num_layers=compat.num_layers,
            num_kv_heads=compat.num_kv_heads,
            head_dim=compat.head_dim,
            dtype=compat.dtype,
            block_size=compat.block_size,
            layout=compat.layout,
        ),
        shards=[
            pb2.KvShard(
                rank=s.rank,
                head_start=s.head_start,
                head_end=s.head_end,
                agent_name=s.agent_name,
                metadata_address=s.metadata_address,
                base_address=s.base_address,
                region_bytes=s.region_bytes,
                device_id=s.device_id,
                memory_type=s.memory_type,
                num_blocks_total=s.num_blocks_total,
            )
            for s in shards
        ],
        prefill_address=prefill_address,
        backend=backend,
        compat_fields=compat.fields_json(),
    ).SerializeToString()


def compat_differences(theirs: dict[str, object], ours: CompatInfo) -> dict[str, tuple[object, object]]:
    """Fields whose values differ: ``{name: (prefill value, decode value)}``."""
    mine = asdict(ours)
    return {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}


def check_compat(handle: pb2.KvHandle, ours: CompatInfo) -> None:
    """Raise KvCompatError naming both values of every differing field, KvHandleError when the
    announced fields do not hash to the announced hash (corruption)."""
    if handle.protocol_version != ours.protocol_version:
        raise KvCompatError({"protocol_version": (handle.protocol_version, ours.protocol_version)})
    theirs = _announced_fields(handle.compat_fields, handle.compat_hash)
    if handle.compat_hash != ours.hash():
        diffs = compat_differences(theirs, ours)
        raise KvCompatError(diffs or {"compat_hash": (handle.compat_hash, ours.hash())})


def shard_geometry(handle: pb2.KvHandle, shard: pb2.KvShard) -> PoolGeometry:
    """Pool geometry of one prefill shard announced in ``handle``."""
    lay = handle.layout
    return PoolGeometry(
        num_layers=lay.num_layers,
        num_blocks=shard.num_blocks_total,
        num_kv_heads=shard.head_end - shard.head_start,
        block_size=lay.block_size,
        head_dim=lay.head_dim,
        dtype=lay.dtype,
    )


def _require(cond: bool, field: str, problem: str) -> None:
    if not cond:
        raise KvHandleError(field, problem)


def validate_handle(handle: pb2.KvHandle) -> None:
    """Raise KvHandleError naming the first field that is missing, truncated or inconsistent."""
    _require(bool(handle.request_id), "request_id", "empty")
    _require(bool(handle.engine_id), "engine_id", "empty")
    _require(bool(_HEX64.match(handle.compat_hash)), "compat_hash", "not a sha256 hex digest")
    _require(handle.backend in BACKENDS, "backend", f"{handle.backend!r} not one of {BACKENDS}")
    _require(bool(_ADDRESS.match(handle.prefill_address)), "prefill_address", "not host:port")
    _require(handle.expires_unix_ms > 0, "expires_unix_ms", "missing")
    _require(handle.HasField("layout"), "layout", "missing")
    lay = handle.layout
    _require(lay.layout == LAYOUT_NAME, "layout.layout", f"{lay.layout!r}, expected {LAYOUT_NAME!r}")
    _require(lay.dtype in DTYPE_ITEMSIZE, "layout.dtype", f"unknown dtype {lay.dtype!r}")
    for name in ("num_layers", "num_kv_heads", "head_dim", "block_size", "num_tokens"):
        _require(getattr(lay, name) > 0, f"layout.{name}", "must be > 0")
    want = blocks_needed(lay.num_tokens, lay.block_size)
    _require(
        len(handle.block_ids) == want,
        "block_ids",
        f"{len(handle.block_ids)} ids for {lay.num_tokens} tokens of block size {lay.block_size} "
        f"(expected {want}; truncated?)",
    )
    _require(len(handle.shards) > 0, "shards", "empty")
    top = max(handle.block_ids, default=-1)
    next_head = 0
    for i, shard in enumerate(sorted(handle.shards, key=lambda s: s.head_start)):
        f = f"shards[{i}]"
        _require(
            shard.head_start == next_head, f"{f}.head_start", f"{shard.head_start}, expected {next_head}"
        )
        _require(shard.head_end > shard.head_start, f"{f}.head_end", "must exceed head_start")
        next_head = shard.head_end
        _require(shard.num_blocks_total > 0, f"{f}.num_blocks_total", "must be > 0")
        _require(bool(_ADDRESS.match(shard.metadata_address)), f"{f}.metadata_address", "not host:port")
        _require(shard.memory_type in ("DRAM", "VRAM"), f"{f}.memory_type", repr(shard.memory_type))
        geo = shard_geometry(handle, shard)
        _require(top < shard.num_blocks_total, "block_ids", f"block {top} >= {shard.num_blocks_total}")
        if handle.backend == "nixl":
            _require(bool(shard.agent_name), f"{f}.agent_name", "empty for the nixl backend")
            _require(shard.base_address > 0, f"{f}.base_address", "missing")
            _require(
                shard.region_bytes == geo.total_bytes,
                f"{f}.region_bytes",
                f"{shard.region_bytes}, layout implies {geo.total_bytes}",
            )
    _require(next_head == lay.num_kv_heads, "shards", f"cover heads [0, {next_head}) of {lay.num_kv_heads}")


def check_handle(handle: pb2.KvHandle, ours: CompatInfo) -> None:
    """Validate then compat-check a handle; the decode side's gate before any KV bytes move.

    The protocol version is compared first, so a peer speaking another version gets a
    KvCompatError naming both versions rather than a confusing field error."""
    if handle.protocol_version != ours.protocol_version:
        raise KvCompatError({"protocol_version": (handle.protocol_version, ours.protocol_version)})
    validate_handle(handle)
    check_compat(handle, ours)
