"""KV handles, compat hash, held-block book, backend choice, agent metadata checks (pure)."""

from __future__ import annotations

import hashlib

import pytest
from baton_worker.kv.backend import choose_backend
from baton_worker.kv.errors import KvBackendUnavailable, KvCompatError, KvExpiredError, KvHandleError
from baton_worker.kv.handle import CompatInfo, ShardInfo, build_handle, check_handle
from baton_worker.kv.held import HeldBlocks, done_message, parse_done
from baton_worker.kv.layout import PoolGeometry
from baton_worker.kv.sink import check_agent_metadata
from baton_worker.rpc import WIRE_VERSION, pb2

COMPAT = CompatInfo(
    model="m", revision="r1", dtype="bfloat16", num_layers=2, num_kv_heads=4, head_dim=8, block_size=16
)
GEO = PoolGeometry(num_layers=2, num_blocks=10, num_kv_heads=4, block_size=16, head_dim=8, dtype="bfloat16")


def handle(backend: str = "nixl", **overrides: object) -> pb2.KvHandle:
    shard = ShardInfo(
        rank=0,
        head_start=0,
        head_end=4,
        agent_name="agent-a",
        metadata_address="127.0.0.1:5000",
        base_address=0x7000,
        region_bytes=GEO.total_bytes,
        num_blocks_total=10,
    )
    h = build_handle(
        request_id="req-1",
        engine_id="eng-1",
        compat=COMPAT,
        num_tokens=20,
        shards=[shard],
        block_ids=[3, 4],
        prefill_address="127.0.0.1:5000",
        expires_unix_ms=1_000,
        backend=backend,
    )
    for key, value in overrides.items():
        setattr(h, key, value)
    return h


def test_kv_compat_hash_is_stable_and_covers_every_field() -> None:
    assert COMPAT.hash() == CompatInfo(**{**COMPAT.__dict__}).hash()
    assert COMPAT.protocol_version == WIRE_VERSION
    for field, value in [("model", "x"), ("revision", "r2"), ("dtype", "float16"), ("layout", "X"),
                         ("protocol_version", 2), ("block_size", 32), ("num_kv_heads", 8)]:  # fmt: skip
        assert CompatInfo(**{**COMPAT.__dict__, field: value}).hash() != COMPAT.hash(), field


@pytest.mark.parametrize("backend", ["nixl", "grpc"])
def test_kv_good_handle_passes(backend: str) -> None:
    check_handle(handle(backend), COMPAT)


def test_kv_mismatch_names_both_values() -> None:
    ours = CompatInfo(**{**COMPAT.__dict__, "dtype": "float32", "revision": "r9"})
    with pytest.raises(KvCompatError) as info:
        check_handle(handle(), ours)
    assert info.value.differences == {"dtype": ("bfloat16", "float32"), "revision": ("r1", "r9")}
    assert "dtype: prefill='bfloat16' decode='float32'" in str(info.value)
    assert not info.value.retryable


def test_kv_protocol_version_checked_first() -> None:
    with pytest.raises(KvCompatError, match="protocol_version: prefill=7 decode=1"):
        check_handle(handle(protocol_version=7, request_id=""), COMPAT)


def _mutate(fn):  # noqa: ANN001, ANN202
    h = handle()
    fn(h)
    return h


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda h: setattr(h, "request_id", ""), "request_id"),
        (lambda h: setattr(h, "engine_id", ""), "engine_id"),
        (lambda h: setattr(h, "compat_hash", "abc"), "compat_hash"),
        (lambda h: setattr(h, "backend", "rdma"), "backend"),
        (lambda h: setattr(h, "prefill_address", "nohost"), "prefill_address"),
        (lambda h: h.ClearField("layout"), "layout"),
        (lambda h: setattr(h.layout, "dtype", "int4"), "layout.dtype"),
        (lambda h: setattr(h.layout, "num_layers", 0), "layout.num_layers"),
        (lambda h: h.block_ids.pop(), "block_ids"),
        (lambda h: h.block_ids.__setitem__(0, 99), "block_ids"),
        (lambda h: h.ClearField("shards"), "shards"),
        (lambda h: setattr(h.shards[0], "head_end", 3), "shards[0].region_bytes"),
        (lambda h: setattr(h.shards[0], "agent_name", ""), "shards[0].agent_name"),
        (lambda h: setattr(h.shards[0], "base_address", 0), "shards[0].base_address"),
        (lambda h: setattr(h.shards[0], "region_bytes", 5), "shards[0].region_bytes"),
        (lambda h: setattr(h.shards[0], "metadata_address", ""), "shards[0].metadata_address"),
        (lambda h: setattr(h, "compat_fields", "{not json"), "compat_fields"),
        (lambda h: setattr(h, "compat_fields", h.compat_fields.replace("r1", "r2")), "compat_hash"),
    ],
)
def test_kv_malformed_handle_names_the_field(mutate, field: str) -> None:  # noqa: ANN001
    with pytest.raises(KvHandleError) as info:
        check_handle(_mutate(mutate), COMPAT)
    assert info.value.field == field


def test_kv_truncated_wire_bytes_are_refused() -> None:
    data = handle().SerializeToString()
    cut = pb2.KvHandle()
    try:
        cut.ParseFromString(data[: len(data) // 2])
    except Exception:
        return  # protobuf itself refused the truncated message
    with pytest.raises((KvHandleError, KvCompatError)):
        check_handle(cut, COMPAT)


def test_kv_held_blocks_free_exactly_once_by_any_path() -> None:
    freed: list[tuple[str, list[int]]] = []
    held = HeldBlocks(lambda rid, blocks: freed.append((rid, blocks)))
    held.hold("a", [1, 2], expires_unix_ms=100)
    held.hold("b", [3], expires_unix_ms=200)
    held.hold("c", [4], expires_unix_ms=300)
    with pytest.raises(ValueError, match="'a'"):
        held.hold("a", [9], expires_unix_ms=1)
    assert held.held_blocks() == 4
    assert held.release("a") is True
    assert held.release("a") is False
    assert held.expire(now_unix_ms=199) == []
    assert held.expire(now_unix_ms=200) == ["b"]
    assert held.release_all() == 1
    assert freed == [("a", [1, 2]), ("b", [3]), ("c", [4])]
    assert len(held) == 0


def test_kv_done_notification_round_trip() -> None:
    assert parse_done(done_message("req-ü")) == "req-ü"
    assert parse_done(b"other") is None
    assert parse_done(b"baton-kv-done:\xff") is None


@pytest.mark.parametrize(
    ("requested", "loads", "want"),
    [("auto", True, "nixl"), ("auto", False, "grpc"), ("grpc", True, "grpc"), ("nixl", True, "nixl")],
)
def test_kv_choose_backend(requested: str, loads: bool, want: str) -> None:
    assert choose_backend(requested, lambda: loads) == want


def test_kv_choose_backend_errors() -> None:
    with pytest.raises(KvBackendUnavailable, match="no libucx"):
        choose_backend("nixl", lambda: False, lambda: "no libucx")
    with pytest.raises(ValueError, match="kv_backend"):
        choose_backend("rdma", lambda: True)


def _meta(data: bytes = b"M" * 100, **kw: object) -> pb2.AgentMetadata:
    m = pb2.AgentMetadata(
        agent_name="agent-a",
        metadata=data,
        compat_hash=handle().compat_hash,
        engine_id="eng-1",
        metadata_sha256=hashlib.sha256(b"M" * 100).hexdigest(),
    )
    for k, v in kw.items():
        setattr(m, k, v)
    return m


def test_kv_agent_metadata_checks() -> None:
    h = handle()
    check_agent_metadata(_meta(), h, h.shards[0])
    with pytest.raises(KvHandleError, match="truncated or corrupted"):
        check_agent_metadata(_meta(b"M" * 50), h, h.shards[0])
    with pytest.raises(KvHandleError, match="empty"):
        check_agent_metadata(_meta(b""), h, h.shards[0])
    with pytest.raises(KvExpiredError, match="restarted|engine"):
        check_agent_metadata(_meta(engine_id="eng-2"), h, h.shards[0])
    with pytest.raises(KvCompatError):
        check_agent_metadata(_meta(compat_hash="0" * 64), h, h.shards[0])
    with pytest.raises(KvHandleError, match="agent_name"):
        check_agent_metadata(_meta(agent_name="agent-b"), h, h.shards[0])
