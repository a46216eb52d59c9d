"""`baton worker --tensor-parallel-size N` as users run it: real worker processes, real gRPC, NIXL.

Prefill workers with TP 1, 2 and 4 (the worker process is rank 0 and starts the other ranks;
gloo on this CPU) hand their KV to decode workers with TP 1 (which reads every prefill rank's
shard itself) and TP 2 (each of whose ranks reads its own KV heads directly from the prefill
ranks holding them). Greedy output equals transformers' generate in one process; no block stays
held anywhere.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Iterator

import pytest
import torch
from baton_worker.engine import load_model
from baton_worker.rpc import pb2
from kv_worker_procs import WorkerProc, all_blocks_free, generate
from polling import wait_until

torch.set_num_threads(1)

PROMPT = list(range(9, 50))  # 41 tokens: 3 blocks of 16
GREEDY = pb2.SamplingParams(max_tokens=8, temperature=0.0)
# A served name other than the source: every rank must put the same one in its compat hash.
ARGS = (
    "--model",
    "builtin://tiny",
    "--served-model-name",
    "tiny-tp",
    "--kv-blocks",
    "32",
    "--kv-backend",
    "nixl",
)


@functools.cache
def _reference() -> list[int]:
    model = load_model("builtin://tiny")
    out = model.hf_model.generate(torch.tensor([PROMPT]), max_new_tokens=8, do_sample=False, pad_token_id=0)
    return out[0, len(PROMPT) :].tolist()


@pytest.fixture(scope="module")
def workers() -> Iterator[dict[tuple[str, int], WorkerProc]]:
    """Prefill workers TP 1, 2, 4 and decode workers TP 1, 2 (10 processes), started side by side."""
    sizes = [("prefill", 1), ("prefill", 2), ("prefill", 4), ("decode", 1), ("decode", 2)]
    procs = {(role, n): WorkerProc(role, *ARGS, "--tensor-parallel-size", str(n)) for role, n in sizes}
    try:
        for p in procs.values():
            p.wait_ready(timeout=480)
        yield procs
    finally:
        for p in procs.values():  # drain all at once, then wait for each
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.stop()


@pytest.mark.parametrize(("prefill_tp", "decode_tp"), [(2, 1), (1, 2), (4, 2), (2, 2)])
def test_tp_worker_prefill_tp_n_to_decode_tp_m_equals_single_process(
    workers: dict[tuple[str, int], WorkerProc], prefill_tp: int, decode_tp: int
) -> None:
    prefill, decode = workers[("prefill", prefill_tp)], workers[("decode", decode_tp)]
    rid = f"tp-p{prefill_tp}-d{decode_tp}"
    pre = prefill.prefill_stub().Prefill(
        pb2.PrefillRequest(request_id=rid, prompt_token_ids=PROMPT, sampling=GREEDY), timeout=60
    )
    # Every rank's own KV shard is in the handle, each with its own metadata endpoint.
    shards = sorted((s.rank, s.head_start, s.head_end) for s in pre.handle.shards)
    per = 8 // prefill_tp
    assert shards == [(r, r * per, (r + 1) * per) for r in range(prefill_tp)]
    assert len({s.metadata_address for s in pre.handle.shards}) == prefill_tp
    assert len({s.agent_name for s in pre.handle.shards}) == prefill_tp

    tokens, chunks = generate(decode, rid, PROMPT, GREEDY, pre)
    assert tokens == _reference(), f"prefill TP {prefill_tp} -> decode TP {decode_tp}"
    assert (
        chunks[0].kv_transfer_bytes == 4 * 3 * 2 * 8 * 16 * 32 * 4
    )  # layers, blocks, K/V, heads, slots, dim, f32
    wait_until(lambda: all_blocks_free(prefill), timeout=15, what="prefill blocks freed after the pull")
    wait_until(lambda: all_blocks_free(decode), timeout=15, what="decode blocks freed after the request")


def test_tp_worker_decode_tp2_local_prefill_equals_single_process(
    workers: dict[tuple[str, int], WorkerProc],
) -> None:
    # No handle: the TP-2 decode worker prefills locally (conditional disaggregation), sharded.
    tokens, _ = generate(workers[("decode", 2)], "tp-local", PROMPT, GREEDY)
    assert tokens == _reference()


def test_tp_worker_refuses_a_tp_size_the_model_cannot_split() -> None:
    # tiny-qwen2 has 4 KV heads: 8 ranks cannot each hold whole heads. Refused before any rank starts.
    bad = WorkerProc(
        "prefill", "--model", "builtin://tiny-qwen2", "--kv-backend", "nixl", "--tensor-parallel-size", "8"
    )
    assert bad.proc.wait(timeout=120) == 1
    wait_until(lambda: any("KV heads" in line for line in bad.lines), timeout=10, what="the error line")
    assert any(
        "tensorParallelSize: 8 does not divide the model's 4 KV heads" in line for line in bad.lines
    ), bad.lines[-5:]
