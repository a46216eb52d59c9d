"""Mutual TLS with tensor parallelism: the ranks a worker starts inherit its --tls-dir. A TP 2
prefill worker's rank 1 serves its KV metadata over TLS only, and a TP 2 decode worker's ranks
fetch it with the pool's certificate, so the handoff matches one-process generation."""

from __future__ import annotations

import datetime as dt
import functools
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from baton_worker.engine import load_model
from baton_worker.pki import Pem, issue_pool, pool_identity, write_dir
from baton_worker.rpc import pb2, pb2_grpc
from kv_worker_procs import WorkerProc, all_blocks_free, generate
from polling import wait_until

torch.set_num_threads(1)

NAME = pool_identity("tls-tp", "default")
CA, LEAF = issue_pool(NAME, dt.timedelta(days=30), dt.timedelta(days=120), dt.datetime.now(dt.UTC))
PROMPT = list(range(9, 50))
GREEDY = pb2.SamplingParams(max_tokens=8, temperature=0.0)
ARGS = ("--kv-blocks", "32", "--kv-backend", "nixl", "--tensor-parallel-size", "2")


@functools.cache
def reference() -> list[int]:
    model = load_model("builtin://tiny")
    out = model.hf_model.generate(torch.tensor([PROMPT]), max_new_tokens=8, do_sample=False, pad_token_id=0)
    return out[0, len(PROMPT) :].tolist()


def channel(address: str, leaf: Pem | None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        CA.cert, private_key=leaf.key if leaf else None, certificate_chain=leaf.cert if leaf else None
    )
    return grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", NAME)])


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, WorkerProc]]:
    tls_dir: Path = tmp_path_factory.mktemp("tls")
    write_dir(str(tls_dir), CA.cert, LEAF)
    procs = {role: WorkerProc(role, *ARGS, "--tls-dir", str(tls_dir)) for role in ("prefill", "decode")}
    try:
        for p in procs.values():
            p.wait_ready(timeout=480)
            p.channel = channel(p.address, LEAF)
        yield procs
    finally:
        for p in procs.values():
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.stop()


def metadata_code(address: str, ch: grpc.Channel) -> grpc.StatusCode:
    with ch:
        try:
            pb2_grpc.PrefillWorkerStub(ch).GetAgentMetadata(pb2.AgentMetadataRequest(rank=1), timeout=10)
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def test_tp_handoff_over_tls(workers: dict[str, WorkerProc]) -> None:
    prefill, decode = workers["prefill"], workers["decode"]
    pre = prefill.prefill_stub().Prefill(
        pb2.PrefillRequest(request_id="tls-tp", prompt_token_ids=PROMPT, sampling=GREEDY), timeout=120
    )
    (rank1,) = [s for s in pre.handle.shards if s.rank == 1]
    # Rank 1's own metadata endpoint: the pool's certificate only.
    address = rank1.metadata_address
    assert metadata_code(address, grpc.insecure_channel(address)) == grpc.StatusCode.UNAVAILABLE
    assert metadata_code(address, channel(address, None)) == grpc.StatusCode.UNAVAILABLE
    assert metadata_code(address, channel(address, LEAF)) == grpc.StatusCode.OK
    tokens, _ = generate(decode, "tls-tp", PROMPT, GREEDY, pre, timeout=120)
    assert tokens == reference()
    wait_until(lambda: all_blocks_free(prefill), timeout=30, what="prefill blocks freed")
    wait_until(lambda: all_blocks_free(decode), timeout=30, what="decode blocks freed")
