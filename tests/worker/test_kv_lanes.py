"""Split NIXL READs: one pull spread over several agents (lanes) between two real processes.

The prefill side is the `baton bench kv` source process (a real KvSource and gRPC service over
a patterned Llama-3-8B-shaped pool); this process pulls with a real KvSink.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
import torch
from baton_dev.bench import kv as bench
from baton_worker.kv.errors import KvTransferError
from baton_worker.kv.handle import check_handle
from baton_worker.kv.nixl_agent import READ_LANE_MIN_BYTES, default_read_lanes, nixl_available
from baton_worker.kv.sink import KvSink
from baton_worker.rpc import pb2, pb2_grpc
from polling import wait_until

pytestmark = pytest.mark.skipif(not nixl_available(), reason="NIXL does not load here")

POOL_BLOCKS = 48  # 1 MiB per block in this geometry


@pytest.fixture(scope="module")
def source() -> Iterator[pb2_grpc.PrefillWorkerStub]:
    child, address, backend = bench.start_source(POOL_BLOCKS)
    try:
        assert backend == "nixl"
        channel = grpc.insecure_channel(address)
        yield pb2_grpc.PrefillWorkerStub(channel)
        channel.close()
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(timeout=30)


@pytest.fixture()
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[KvSink]:
    monkeypatch.setenv("BATON_KV_READ_LANES", "2")
    dst = torch.zeros(
        bench.LAYERS, POOL_BLOCKS, 2, bench.HEADS, bench.BLOCK, bench.HEAD_DIM, dtype=torch.bfloat16
    )
    s = KvSink(storage=dst, dtype="bfloat16", backend="nixl", name=f"lanes-test-{time.monotonic_ns()}")
    yield s
    s.close()


def _prefill(stub: pb2_grpc.PrefillWorkerStub, rid: str, blocks: int) -> pb2.KvHandle:
    pre = stub.Prefill(
        pb2.PrefillRequest(request_id=rid, prompt_token_ids=[0] * (blocks * bench.BLOCK)), timeout=30
    )
    check_handle(pre.handle, bench.bench_compat())
    return pre.handle


def _held(stub: pb2_grpc.PrefillWorkerStub, handle: pb2.KvHandle) -> bool:
    """Whether the prefill side still holds the handle's blocks (read-only: PullKv's answer)."""
    req = pb2.PullKvRequest(
        request_id=handle.request_id, engine_id=handle.engine_id, rank=0, compat_hash=handle.compat_hash
    )
    try:
        stream = stub.PullKv(req, timeout=10)
        next(iter(stream))
        stream.cancel()
        return True
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        return False


def _wait_freed(stub: pb2_grpc.PrefillWorkerStub, handle: pb2.KvHandle, timeout: float = 10) -> None:
    wait_until(lambda: not _held(stub, handle), timeout=timeout, what=f"{handle.request_id}: blocks freed")


@pytest.mark.parametrize(("blocks", "lanes_used"), [(4, 1), (40, 2)])
def test_kv_split_read_moves_every_byte_then_frees(
    source: pb2_grpc.PrefillWorkerStub, sink: KvSink, blocks: int, lanes_used: int
) -> None:
    assert sink.endpoint is not None and sink.endpoint.read_lanes == 2
    assert (blocks * bench.BLOCK_BYTES >= 2 * READ_LANE_MIN_BYTES) == (lanes_used == 2)
    for rep in range(2):  # the second pull reuses the cached peer on every lane
        handle = _prefill(source, f"lanes-{blocks}-{rep}", blocks)
        # Reversed destination blocks (one run per block and layer): the split must keep
        # every run's placement.
        dst_blocks = list(range(POOL_BLOCKS - blocks, POOL_BLOCKS))[::-1]
        sink.storage.zero_()
        splits = sink.endpoint.split_reads
        result = sink.pull(handle, dst_blocks, time.monotonic() + 60)
        assert result.backend == "nixl" and result.bytes == blocks * bench.BLOCK_BYTES
        assert sink.endpoint.split_reads - splits == (1 if lanes_used == 2 else 0)
        per_block = sink.storage[0, 0].numel() * 2 // 8
        for layer in range(bench.LAYERS):
            for i, b in enumerate(dst_blocks):
                got = sink.storage[layer, b].reshape(-1).view(torch.int64)
                start = (layer * POOL_BLOCKS + i) * per_block
                assert torch.equal(got, torch.arange(start, start + per_block, dtype=torch.int64)), (
                    layer,
                    i,
                    b,
                )
        # The done notification follows the last lane: the prefill side frees the blocks.
        _wait_freed(source, handle)


def test_kv_split_read_failure_is_typed_and_leaves_the_sink_usable(
    source: pb2_grpc.PrefillWorkerStub, sink: KvSink
) -> None:
    handle = _prefill(source, "lanes-bad", 40)
    bad = pb2.KvHandle()
    bad.CopyFrom(handle)
    bad.shards[0].base_address += 1 << 40  # nothing of the peer's is registered there
    with pytest.raises(KvTransferError, match="NIXL"):
        sink.pull(bad, list(range(40)), time.monotonic() + 30)
    # Nothing was notified: the blocks are still held until Release (or the TTL).
    assert _held(source, handle)
    assert source.Release(pb2.ReleaseRequest(request_id=handle.request_id), timeout=10).released
    # The failed peer was forgotten; the next pull fetches its metadata again and works.
    good = _prefill(source, "lanes-after", 40)
    assert sink.pull(good, list(range(40)), time.monotonic() + 60).bytes == 40 * bench.BLOCK_BYTES
    _wait_freed(source, good)


@pytest.mark.parametrize(
    ("env", "memory", "want"),
    [("3", "DRAM", 3), ("1", "VRAM", 1), ("", "VRAM", 1)],
)
def test_kv_default_read_lanes(monkeypatch: pytest.MonkeyPatch, env: str, memory: str, want: int) -> None:
    monkeypatch.setenv("BATON_KV_READ_LANES", env)
    assert default_read_lanes(memory) == want


def test_kv_default_read_lanes_follow_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATON_KV_READ_LANES", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(16)))
    assert default_read_lanes("DRAM") == 4
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0})
    assert default_read_lanes("DRAM") == 1


@pytest.mark.parametrize("env", ["0", "two", "-1"])
def test_kv_read_lanes_env_refused(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv("BATON_KV_READ_LANES", env)
    with pytest.raises(ValueError, match="BATON_KV_READ_LANES"):
        default_read_lanes("DRAM")


def test_kv_lane_that_fails_to_start_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    from baton_worker.kv import nixl_agent

    real = nixl_agent._Lane

    def flaky(nixl, name, region, progress_thread):  # noqa: ANN001, ANN202
        if name.endswith(".lane2"):
            raise RuntimeError("UCX: out of resources")
        return real(nixl, name, region, progress_thread)

    monkeypatch.setattr(nixl_agent, "_Lane", flaky)
    buf = torch.zeros(1 << 20, dtype=torch.uint8)
    region = nixl_agent.Region(address=buf.data_ptr(), length=buf.numel(), device_id=0, memory_type="DRAM")
    ep = nixl_agent.NixlEndpoint(f"flaky-{time.monotonic_ns()}", region, read_lanes=4)
    try:
        assert ep.read_lanes == 2  # the first lanes work; the rest are dropped, not fatal
        assert ep.metadata
    finally:
        ep.close()
