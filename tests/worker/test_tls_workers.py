"""Mutual TLS between real worker processes (``--tls-dir``): who is refused, who is served, the
KV handoff between TLS workers (NIXL metadata and the PullKv stream), and a certificate rotation
done the way the kubelet does it (a ``..data`` symlink swap) while the workers run."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from baton_worker.engine import (
    DecodeEngine,
    EngineLoop,
    EngineRequest,
    KvBlockPool,
    SamplingParams,
    load_model,
)
from baton_worker.pki import Pem, issue_pool, new_leaf, pool_identity, write_dir
from baton_worker.rpc import pb2, pb2_grpc
from kv_worker_procs import WorkerProc, all_blocks_free, generate, running
from polling import wait_until

torch.set_num_threads(1)

IDENTITY = pool_identity("tls-test", "default")
DAY = dt.timedelta(days=1)
PROMPT = [int(t) for t in torch.randint(3, 800, (45,), generator=torch.Generator().manual_seed(11))]
GREEDY = pb2.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


def _issue(identity: str = IDENTITY) -> tuple[Pem, Pem]:
    return issue_pool(identity, 30 * DAY, 120 * DAY, dt.datetime.now(dt.UTC))


POOL_CA, POOL_LEAF = _issue()
OTHER_CA, OTHER_LEAF = _issue()  # the same name, another CA
NEXT_CA = _issue()[0]  # the CA the rotation moves to


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    write_dir(str(d), POOL_CA.cert, POOL_LEAF)
    return d


@pytest.fixture(scope="module")
def workers(tls_dir: Path) -> Iterator[dict[str, WorkerProc]]:
    """A NIXL prefill worker, a NIXL decode worker and a gRPC decode worker (which pulls the NIXL
    prefill worker's KV over PullKv), all with the same --tls-dir."""
    common = ("--kv-blocks", "64", "--kv-timeout-s", "10", "--tls-dir", str(tls_dir))
    procs = {
        "prefill": WorkerProc("prefill", "--kv-backend", "nixl", *common),
        "decode-nixl": WorkerProc("decode", "--kv-backend", "nixl", *common),
        "decode-grpc": WorkerProc("decode", "--kv-backend", "grpc", *common),
    }
    with running(procs):
        for p in procs.values():
            p.channel = channel(p.address, POOL_CA.cert, POOL_LEAF)  # the helpers' calls use it
        yield procs


def channel(address: str, ca: bytes, leaf: Pem | None, name: str = IDENTITY) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=leaf.key if leaf else None,
        certificate_chain=leaf.cert if leaf else None,
    )
    return grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", name)])


def health_code(ch: grpc.Channel, role: str = "prefill") -> grpc.StatusCode:
    """OK when the Health of a ``role`` worker answers on ``ch``, else the status of the failure."""
    stub = pb2_grpc.PrefillWorkerStub if role == "prefill" else pb2_grpc.DecodeWorkerStub
    with ch:
        try:
            stub(ch).Health(pb2.HealthRequest(), timeout=10)
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def test_ready_line_says_tls_on(workers: dict[str, WorkerProc]) -> None:
    for p in workers.values():
        assert any("baton worker ready" in line and line.endswith("tls=on") for line in p.lines), p.lines


def test_plaintext_client_is_refused(workers: dict[str, WorkerProc]) -> None:
    for p in workers.values():
        assert health_code(grpc.insecure_channel(p.address), p.role) == grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_is_refused(workers: dict[str, WorkerProc]) -> None:
    for p in workers.values():
        assert health_code(channel(p.address, POOL_CA.cert, None), p.role) == grpc.StatusCode.UNAVAILABLE


def test_client_certificate_from_another_ca_is_refused(workers: dict[str, WorkerProc]) -> None:
    # It trusts the pool's CA and carries the pool's name: only its issuer is wrong.
    for p in workers.values():
        got = health_code(channel(p.address, POOL_CA.cert, OTHER_LEAF), p.role)
        assert got == grpc.StatusCode.UNAVAILABLE


def test_client_refuses_a_server_without_the_pool_name(workers: dict[str, WorkerProc]) -> None:
    address = workers["prefill"].address
    wrong = pool_identity("other-pool", "default")
    assert health_code(channel(address, POOL_CA.cert, POOL_LEAF, name=wrong)) == grpc.StatusCode.UNAVAILABLE


def test_pool_certificate_is_served(workers: dict[str, WorkerProc]) -> None:
    for p in workers.values():
        assert health_code(channel(p.address, POOL_CA.cert, POOL_LEAF), p.role) == grpc.StatusCode.OK
        assert p.health().ready


@functools.cache
def reference() -> tuple[int, ...]:
    model = load_model("builtin://tiny")
    loop = EngineLoop(
        DecodeEngine(model, KvBlockPool.for_model(model, num_blocks=64, block_size=16), 4)
    ).start()
    try:
        sp = SamplingParams(max_tokens=GREEDY.max_tokens, temperature=0.0, ignore_eos=True)
        stream = loop.submit(EngineRequest("ref", tuple(PROMPT), sp))
        tokens: list[int] = []
        while True:
            out = stream.get(timeout=60)
            tokens += out.new_token_ids
            if out.finished:
                return tuple(tokens)
    finally:
        loop.stop()


def handoff(workers: dict[str, WorkerProc], decode: str) -> tuple[list[int], pb2.TokenChunk]:
    """Prefill on the prefill worker, then Generate on ``decode`` with its handle."""
    rid = f"tls-{decode}-{uuid.uuid4().hex[:6]}"
    pre = (
        workers["prefill"]
        .prefill_stub()
        .Prefill(pb2.PrefillRequest(request_id=rid, prompt_token_ids=PROMPT, sampling=GREEDY), timeout=60)
    )
    assert pre.handle.backend == "nixl"
    # After the first handoff a decode worker holds the prompt's full blocks in its prefix cache
    # and pulls only the last one: that still goes over TLS.
    tokens, chunks = generate(workers[decode], rid, PROMPT, GREEDY, pre)
    wait_until(lambda: all_blocks_free(workers["prefill"]), timeout=15, what="prefill blocks freed")
    return tokens, chunks[0]


@pytest.mark.parametrize("decode", ["decode-nixl", "decode-grpc"])
def test_kv_handoff_between_tls_workers(workers: dict[str, WorkerProc], decode: str) -> None:
    """NIXL: GetAgentMetadata over TLS, then the READ. gRPC: PullKv and Release over TLS."""
    tokens, first = handoff(workers, decode)
    assert tokens == list(reference())
    assert first.kv_transfer_bytes > 0


def test_rotation_to_a_new_ca_keeps_the_handoff_working(
    workers: dict[str, WorkerProc], tls_dir: Path
) -> None:
    """The kubelet's order: old+new CA in ca.crt, then the certificate from the new CA, then the
    new CA alone. Afterwards a client with the old certificate is refused on a new connection,
    and the decode workers reach the prefill worker with the new one (they made new channels)."""
    now = dt.datetime.now(dt.UTC)
    next_leaf = new_leaf(IDENTITY, NEXT_CA, now - dt.timedelta(minutes=5), now + 30 * DAY)
    write_dir(str(tls_dir), POOL_CA.cert + NEXT_CA.cert, POOL_LEAF)
    assert handoff(workers, "decode-grpc")[0] == list(reference())
    write_dir(str(tls_dir), POOL_CA.cert + NEXT_CA.cert, next_leaf)
    assert handoff(workers, "decode-grpc")[0] == list(reference())
    write_dir(str(tls_dir), NEXT_CA.cert, next_leaf)
    address = workers["prefill"].address
    assert health_code(channel(address, NEXT_CA.cert, POOL_LEAF)) == grpc.StatusCode.UNAVAILABLE
    assert health_code(channel(address, NEXT_CA.cert, next_leaf)) == grpc.StatusCode.OK
    for p in workers.values():
        p.channel = channel(p.address, NEXT_CA.cert, next_leaf)
    for decode in ("decode-grpc", "decode-nixl"):
        tokens, first = handoff(workers, decode)
        assert tokens == list(reference()) and first.kv_transfer_bytes > 0
    for p in workers.values():
        assert any("baton tls: reloaded" in line for line in p.lines), p.role
