"""KV handoff between real processes on 127.0.0.1: a prefill worker prefills, a decode worker pulls
the KV (NIXL READ, or the gRPC PullKv fallback) and continues; the output must equal generation in
one process by the engine itself. Then the failure modes: compat mismatch, corrupted/truncated
handles, TTL expiry, prefill killed mid-transfer; no leaked blocks on either side afterwards."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator

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
from baton_worker.router.prefill_stream import PrefillCaller
from baton_worker.rpc import pb2
from kv_worker_procs import WorkerProc, all_blocks_free, generate, running
from polling import wait_until

torch.set_num_threads(1)

PROMPT = [int(t) for t in torch.randint(3, 800, (45,), generator=torch.Generator().manual_seed(7))]
GREEDY = pb2.SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
SAMPLED = pb2.SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, seed=1234, ignore_eos=True)


@functools.cache
def reference(max_tokens: int, temperature: float, top_p: float, seed: int | None) -> tuple[int, ...]:
    """The engine's own generation in this one process (no disaggregation)."""
    model = load_model("builtin://tiny")
    pool = KvBlockPool.for_model(model, num_blocks=64, block_size=16)
    loop = EngineLoop(DecodeEngine(model, pool, max_batch_size=4)).start()
    try:
        sp = SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, ignore_eos=True
        )
        stream = loop.submit(EngineRequest("ref", tuple(PROMPT), sp))
        tokens: list[int] = []
        while True:
            out = stream.get(timeout=60)
            tokens += out.new_token_ids
            if out.finished:
                return tuple(tokens)
    finally:
        loop.stop()


def ref_for(sp: pb2.SamplingParams) -> list[int]:
    return list(
        reference(sp.max_tokens, sp.temperature, sp.top_p or 1.0, sp.seed if sp.HasField("seed") else None)
    )


@pytest.fixture(scope="module")
def workers() -> Iterator[dict[str, WorkerProc]]:
    """Two pairs (NIXL, gRPC) plus a gRPC prefill with a short TTL and slow PullKv (the victim)."""
    procs = {
        "prefill-nixl": WorkerProc("prefill", "--kv-backend", "nixl", "--kv-blocks", "64"),
        "decode-nixl": WorkerProc(
            "decode", "--kv-backend", "nixl", "--kv-blocks", "64", "--kv-timeout-s", "5"
        ),
        "prefill-grpc": WorkerProc("prefill", "--kv-backend", "grpc", "--kv-blocks", "64"),
        "decode-grpc": WorkerProc(
            "decode", "--kv-backend", "grpc", "--kv-blocks", "64", "--kv-timeout-s", "5"
        ),
        "victim": WorkerProc(
            "prefill",
            "--kv-backend",
            "grpc",
            "--kv-blocks",
            "64",
            "--kv-ttl-s",
            "2",
            "--kv-pull-delay-ms",
            "400",
        ),
    }
    with running(procs):
        yield procs


def _prefill(
    worker: WorkerProc, rid: str, sp: pb2.SamplingParams, prompt: list[int] = PROMPT
) -> pb2.PrefillResponse:
    return worker.prefill_stub().Prefill(
        pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, sampling=sp), timeout=60
    )


@pytest.mark.parametrize("backend", ["nixl", "grpc"])
@pytest.mark.parametrize("sp", [GREEDY, SAMPLED], ids=["greedy", "seeded"])
def test_kv_handoff_equals_single_process(
    workers: dict[str, WorkerProc], backend: str, sp: pb2.SamplingParams
) -> None:
    prefill, decode = workers[f"prefill-{backend}"], workers[f"decode-{backend}"]
    assert prefill.backend == backend and decode.backend == backend
    rid = f"handoff-{backend}-{uuid.uuid4().hex[:6]}"
    pre = _prefill(prefill, rid, sp)
    assert pre.handle.backend == backend
    assert prefill.health().free_blocks == 64 - len(pre.handle.block_ids)
    tokens, chunks = generate(decode, rid, PROMPT, sp, pre)
    assert tokens == ref_for(sp)
    assert tokens[0] == pre.first_token
    assert chunks[-1].finish_reason == "length"
    # Bytes of 45 tokens = 3 blocks x 4 layers x K,V x 8 heads x 16 x 32 x float32 the first time
    # this decode worker sees PROMPT; after that its prefix cache holds the 2 full blocks and only
    # the partial last one moves (tests/worker/test_kv_prefix_reuse.py checks which, when).
    per_block = 4 * 2 * 8 * 16 * 32 * 4
    assert chunks[0].kv_transfer_bytes in (3 * per_block, per_block)
    assert chunks[0].kv_transfer_seconds > 0
    wait_until(lambda: all_blocks_free(prefill), timeout=15, what="prefill blocks freed after the handoff")
    wait_until(lambda: all_blocks_free(decode), timeout=15, what="decode blocks freed after the request")


def _stream_prefill(worker: WorkerProc, request: pb2.PrefillRequest, timeout: float) -> pb2.PrefillResponse:
    """Prefill the way the router does: over the worker's PrefillStream (grpc.aio)."""

    async def call() -> pb2.PrefillResponse:
        async with grpc.aio.insecure_channel(worker.address) as ch:
            caller = PrefillCaller(ch, worker.address)
            try:
                resp = await caller.prefill(request, timeout)
            finally:
                await caller.close()
            assert caller.unary_calls == 0  # the worker took the stream
            return resp

    return asyncio.run(call())


@pytest.mark.parametrize("backend", ["nixl", "grpc"])
def test_kv_handoff_over_the_prefill_stream_equals_single_process(
    workers: dict[str, WorkerProc], backend: str
) -> None:
    prefill, decode = workers[f"prefill-{backend}"], workers[f"decode-{backend}"]
    rid = f"stream-{backend}-{uuid.uuid4().hex[:6]}"
    pre = _stream_prefill(
        prefill, pb2.PrefillRequest(request_id=rid, prompt_token_ids=PROMPT, sampling=SAMPLED), 60
    )
    assert pre.handle.request_id == rid and pre.handle.backend == backend
    tokens, _ = generate(decode, rid, PROMPT, SAMPLED, pre)
    assert tokens == ref_for(SAMPLED)
    wait_until(lambda: all_blocks_free(prefill), timeout=15, what="prefill blocks freed after the handoff")
    wait_until(lambda: all_blocks_free(decode), timeout=15, what="decode blocks freed after the request")


def test_kv_stream_call_past_its_deadline_leaves_no_blocks(workers: dict[str, WorkerProc]) -> None:
    """Calls on one long-lived stream whose caller stops waiting before the prefill is done: the
    worker frees what it issues for them while the stream stays open (the deadline freed them,
    not the end of the stream)."""
    prefill = workers["prefill-nixl"]
    released = _freed_by_release(prefill)

    async def body() -> tuple[list[grpc.StatusCode], bool]:
        async with grpc.aio.insecure_channel(prefill.address) as ch:
            caller = PrefillCaller(ch, prefill.address)
            codes = []
            salt = uuid.uuid4().int % 1000
            for i in range(3):
                rid = f"late-{i}-{uuid.uuid4().hex[:6]}"
                # A prompt of its own each time (a prefix-cache hit would be quick), long enough
                # (900 tokens) that its prefill outlasts the deadline once it runs.
                prompt = [3 + (t + 97 * i + salt) % 797 for t in PROMPT * 20]
                request = pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, sampling=GREEDY)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await caller.prefill(request, 0.015)
                codes.append(err.value.code())
            # Well before the 60 s TTL, with the stream still open.
            await asyncio.to_thread(
                wait_until,
                lambda: all_blocks_free(prefill),
                timeout=10,
                what="prefill blocks freed after abandoned calls",
            )
            still_open = caller.streaming
            await caller.close()
            return codes, still_open

    codes, still_open = asyncio.run(body())
    assert set(codes) <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert still_open
    # ... and they were issued, then freed as abandoned (not refused before running).
    assert _freed_by_release(prefill) > released


def _freed_by_release(worker: WorkerProc) -> float:
    with urllib.request.urlopen(f"http://{worker.metrics}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'^baton_worker_kv_freed\{reason="release",role="prefill"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize("backend", ["nixl", "grpc"])
def test_kv_failover_resume_continues_the_same_stream(workers: dict[str, WorkerProc], backend: str) -> None:
    """Resume after k tokens (as the router does on failover): prefill prompt + those tokens, decode
    continues at output index k with the same seeded samples, no duplicate, no gap."""
    ref = ref_for(SAMPLED)
    k = 4
    rid = f"resume-{backend}-{uuid.uuid4().hex[:6]}"
    pre = (
        workers[f"prefill-{backend}"]
        .prefill_stub()
        .Prefill(
            pb2.PrefillRequest(
                request_id=rid, prompt_token_ids=PROMPT, sampling=SAMPLED, resume_token_ids=ref[:k]
            ),
            timeout=60,
        )
    )
    assert pre.first_token == ref[k]
    req = pb2.GenerateRequest(
        request_id=rid,
        prompt_token_ids=PROMPT,
        sampling=SAMPLED,
        handle=pre.handle,
        first_token=pre.first_token,
        resume_token_ids=ref[:k],
    )
    chunks = list(workers[f"decode-{backend}"].decode_stub().Generate(req, timeout=60))
    assert [t for c in chunks for t in c.token_ids] == ref[k:]
    assert chunks[-1].completion_tokens == len(ref)
    wait_until(
        lambda: all_blocks_free(workers[f"prefill-{backend}"]), timeout=15, what="prefill blocks freed"
    )


def test_kv_nixl_handle_pulled_over_grpc_by_a_grpc_decoder(workers: dict[str, WorkerProc]) -> None:
    """A decode worker without NIXL still reads a NIXL prefill worker's handle (PullKv)."""
    rid = f"mixed-{uuid.uuid4().hex[:6]}"
    pre = _prefill(workers["prefill-nixl"], rid, GREEDY)
    tokens, chunks = generate(workers["decode-grpc"], rid, PROMPT, GREEDY, pre)
    assert tokens == ref_for(GREEDY)
    wait_until(lambda: all_blocks_free(workers["prefill-nixl"]), timeout=15, what="prefill blocks freed")


def _rehash(handle: pb2.KvHandle, **changes: object) -> pb2.KvHandle:
    """A handle whose compat fields say something else, consistently hashed (a real other model)."""
    fields = json.loads(handle.compat_fields)
    fields.update(changes)
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    out = pb2.KvHandle()
    out.CopyFrom(handle)
    out.compat_fields = text
    out.compat_hash = hashlib.sha256(text.encode()).hexdigest()
    return out


def _generate_error(
    decode: WorkerProc, rid: str, handle: pb2.KvHandle, first: int, timeout: float = 30
) -> grpc.RpcError:
    req = pb2.GenerateRequest(
        request_id=rid, prompt_token_ids=PROMPT, sampling=GREEDY, handle=handle, first_token=first
    )
    with pytest.raises(grpc.RpcError) as info:
        list(decode.decode_stub().Generate(req, timeout=timeout))
    return info.value


@pytest.mark.parametrize("backend", ["nixl", "grpc"])
def test_kv_refuses_incompatible_and_corrupted_handles(workers: dict[str, WorkerProc], backend: str) -> None:
    prefill, decode = workers[f"prefill-{backend}"], workers[f"decode-{backend}"]
    cases = {
        "dtype": (
            lambda h: _rehash(h, dtype="bfloat16"),
            grpc.StatusCode.FAILED_PRECONDITION,
            ["prefill='bfloat16'", "decode='float32'"],
        ),
        "model": (
            lambda h: _rehash(h, model="other/model", revision="abc"),
            grpc.StatusCode.FAILED_PRECONDITION,
            ["other/model", "builtin://tiny"],
        ),
        "corrupted": (
            lambda h: _corrupt(h),
            grpc.StatusCode.FAILED_PRECONDITION,
            ["compat_hash", "corrupted"],
        ),
        "truncated": (
            lambda h: _truncate(h),
            grpc.StatusCode.FAILED_PRECONDITION,
            ["block_ids", "truncated"],
        ),
        "protocol": (
            lambda h: _protocol(h),
            grpc.StatusCode.FAILED_PRECONDITION,
            ["protocol_version", "prefill=99", "decode=1"],
        ),
    }
    for name, (mutate, code, words) in cases.items():
        rid = f"bad-{name}-{backend}-{uuid.uuid4().hex[:6]}"
        pre = _prefill(prefill, rid, GREEDY)
        t0 = time.monotonic()
        err = _generate_error(decode, rid, mutate(pre.handle), pre.first_token)
        assert time.monotonic() - t0 < 10
        assert err.code() == code, (name, err.details())
        for word in words:
            assert word in err.details(), (name, word, err.details())
        # The refused handle's blocks are released at once on the prefill side, none held on decode.
        wait_until(lambda: all_blocks_free(prefill), timeout=5, what=f"{name}: prefill blocks freed")
        assert all_blocks_free(decode)


def _corrupt(h: pb2.KvHandle) -> pb2.KvHandle:
    out = pb2.KvHandle()
    out.CopyFrom(h)
    out.compat_fields = out.compat_fields.replace("float32", "float16")  # hash no longer matches
    return out


def _truncate(h: pb2.KvHandle) -> pb2.KvHandle:
    out = pb2.KvHandle()
    out.CopyFrom(h)
    del out.block_ids[-1]
    return out


def _protocol(h: pb2.KvHandle) -> pb2.KvHandle:
    out = pb2.KvHandle()
    out.CopyFrom(h)
    out.protocol_version = 99
    return out


def test_kv_ttl_frees_abandoned_blocks(workers: dict[str, WorkerProc]) -> None:
    victim, decode = workers["victim"], workers["decode-grpc"]
    rid = f"ttl-{uuid.uuid4().hex[:6]}"
    pre = _prefill(victim, rid, GREEDY)
    assert not all_blocks_free(victim)
    wait_until(lambda: all_blocks_free(victim), timeout=10, what="TTL (2 s) to free the abandoned blocks")
    # A late decoder gets a typed retryable error, not stale bytes.
    err = _generate_error(decode, rid, pre.handle, pre.first_token)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "kv_expired" in err.details()
    assert all_blocks_free(decode)


def test_kv_prefill_killed_mid_grpc_transfer(workers: dict[str, WorkerProc]) -> None:
    """The victim streams one chunk per 400 ms; killing it mid-stream fails the pull at once."""
    victim, decode = workers["victim"], workers["decode-grpc"]
    rid = f"kill-grpc-{uuid.uuid4().hex[:6]}"
    pre = _prefill(victim, rid, GREEDY)
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["tokens"] = generate(decode, rid, PROMPT, GREEDY, pre, timeout=30)
        except grpc.RpcError as exc:
            result["error"] = exc
        result["t"] = time.monotonic()

    th = threading.Thread(target=run)
    th.start()
    wait_until(
        lambda: decode.health().queue_depth > 0,
        timeout=5,
        what="the decode worker to start pulling",
        interval=0.01,
    )
    t_kill = time.monotonic()
    victim.kill()
    th.join(timeout=15)
    assert not th.is_alive(), "Generate hung after the prefill worker died"
    err = result.get("error")
    assert isinstance(err, grpc.RpcError), result
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "kv_transfer_failed" in err.details()
    assert float(result["t"]) - t_kill < 6  # within the decode worker's 5 s KV deadline
    wait_until(lambda: all_blocks_free(decode), timeout=5, what="decode blocks back after the failed pull")


def test_kv_prefill_killed_before_nixl_read(workers: dict[str, WorkerProc]) -> None:
    """Decode already knows the prefill agent (cached metadata); the agent then dies: the READ
    fails or times out within the deadline with a typed retryable error, no hang, no leak."""
    prefill, decode = workers["prefill-nixl"], workers["decode-nixl"]
    warm = f"warm-{uuid.uuid4().hex[:6]}"
    generate(decode, warm, PROMPT, GREEDY, _prefill(prefill, warm, GREEDY))
    rid = f"kill-nixl-{uuid.uuid4().hex[:6]}"
    pre = _prefill(prefill, rid, GREEDY)
    prefill.kill()
    t0 = time.monotonic()
    err = _generate_error(decode, rid, pre.handle, pre.first_token)
    assert time.monotonic() - t0 < 8
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert "kv_" in err.details()
    wait_until(lambda: all_blocks_free(decode), timeout=5, what="decode blocks back after the failed READ")
    # The decode worker still serves: a local-prefill request works afterwards.
    tokens, _ = generate(decode, f"after-{uuid.uuid4().hex[:6]}", PROMPT, GREEDY)
    assert tokens == ref_for(GREEDY)
