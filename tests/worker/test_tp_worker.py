"""`baton worker --tensor-parallel-size N` as users run it: real worker processes, real gRPC, NIXL.

A prefill worker with TP 2 (the worker process is rank 0 and starts rank 1; gloo on this CPU)
hands its KV to a TP-1 decode worker (which reads both prefill ranks' shards itself) and to a TP-2
decode worker (each of whose ranks reads its own heads from the prefill rank holding them).
Greedy output equals transformers' generate in one process; no block stays held anywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import torch
from baton_worker.engine import load_model
from baton_worker.rpc import pb2
from kv_worker_procs import WorkerProc, all_blocks_free, generate, wait_for

torch.set_num_threads(1)

PROMPT = list(range(9, 50))  # 41 tokens: 3 blocks of 16
GREEDY = pb2.SamplingParams(max_tokens=8, temperature=0.0)
ARGS = ("--model", "builtin://tiny", "--kv-blocks", "32", "--kv-backend", "nixl")


@functools.cache
def _reference() -> list[int]:
    model = load_model("builtin://tiny")
    out = model.hf_model.generate(torch.tensor([PROMPT]), max_new_tokens=8, do_sample=False, pad_token_id=0)
    return out[0, len(PROMPT) :].tolist()


@pytest.fixture(scope="module")
def workers() -> Iterator[dict[str, WorkerProc]]:
    procs = {
        "prefill2": WorkerProc("prefill", *ARGS, "--tensor-parallel-size", "2"),
        "decode1": WorkerProc("decode", *ARGS),
        "decode2": WorkerProc("decode", *ARGS, "--tensor-parallel-size", "2"),
    }
    try:
        for p in procs.values():
            p.wait_ready(timeout=400)
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.mark.parametrize("decode", ["decode1", "decode2"])
def test_tp_worker_prefill_tp2_to_decode_equals_single_process(
    workers: dict[str, WorkerProc], decode: str
) -> None:
    prefill = workers["prefill2"]
    rid = f"tp-{decode}"
    pre = prefill.prefill_stub().Prefill(
        pb2.PrefillRequest(request_id=rid, prompt_token_ids=PROMPT, sampling=GREEDY), timeout=60
    )
    shards = sorted((s.rank, s.head_start, s.head_end) for s in pre.handle.shards)
    assert shards == [(0, 0, 4), (1, 4, 8)]  # every rank's own KV shard is in the handle
    assert len({s.metadata_address for s in pre.handle.shards}) == 2

    tokens, chunks = generate(workers[decode], rid, PROMPT, GREEDY, pre)
    assert tokens == _reference()
    assert chunks[0].kv_transfer_bytes == 4 * 3 * 2 * 8 * 16 * 32 * 4  # layers x blocks x K,V x heads...
    wait_for("prefill blocks freed after the pull", lambda: all_blocks_free(prefill))
    wait_for("decode blocks freed after the request", lambda: all_blocks_free(workers[decode]))


def test_tp_worker_refuses_a_tp_size_the_model_cannot_split() -> None:
    # tiny-qwen2 has 4 KV heads: 8 ranks cannot each hold whole heads. Refused before any rank starts.
    bad = WorkerProc(
        "prefill", "--model", "builtin://tiny-qwen2", "--kv-backend", "nixl", "--tensor-parallel-size", "8"
    )
    assert bad.proc.wait(timeout=120) == 1
    wait_for("the error line", lambda: any("KV heads" in line for line in bad.lines), timeout=10)
    assert any(
        "tensorParallelSize: 8 does not divide the model's 4 KV heads" in line for line in bad.lines
    ), bad.lines[-5:]
