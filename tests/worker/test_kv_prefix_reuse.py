"""Disaggregated prefix caching between real processes: a decode worker that already holds a
prompt's leading blocks (a previous turn) pulls only the blocks it lacks, over NIXL and over
gRPC, and the output is the same; a prompt it holds whole moves no byte and the prefill side
frees its copy at once. The prefill worker computes only what follows its own cached prefix."""

from __future__ import annotations

import random
import re
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from baton_worker.rpc import pb2
from kv_worker_procs import WorkerProc, all_blocks_free, generate, running
from polling import wait_until

GREEDY = pb2.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
PER_BLOCK = 4 * 2 * 8 * 16 * 32 * 4  # builtin://tiny, float32, 16 tokens a block


@pytest.fixture(scope="module")
def pairs() -> Iterator[dict[str, WorkerProc]]:
    procs = {
        f"{role}-{backend}": WorkerProc(role, "--kv-backend", backend, "--kv-blocks", "64")
        for backend in ("nixl", "grpc")
        for role in ("prefill", "decode")
    }
    with running(procs):
        yield procs


def _metric(worker: WorkerProc, name: str) -> float:
    text = urllib.request.urlopen(f"http://{worker.metrics}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def _turn(
    prefill: WorkerProc, decode: WorkerProc, prompt: list[int]
) -> tuple[list[int], pb2.PrefillResponse, int]:
    rid = f"turn-{uuid.uuid4().hex[:8]}"
    pre = prefill.prefill_stub().Prefill(
        pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, sampling=GREEDY), timeout=60
    )
    tokens, chunks = generate(decode, rid, prompt, GREEDY, pre)
    return tokens, pre, chunks[0].kv_transfer_bytes


@pytest.mark.parametrize("backend", ["nixl", "grpc"])
def test_a_second_turn_moves_only_the_blocks_the_decode_worker_lacks(
    pairs: dict[str, WorkerProc], backend: str
) -> None:
    prefill, decode = pairs[f"prefill-{backend}"], pairs[f"decode-{backend}"]
    rng = random.Random(backend)
    first = [rng.randrange(3, 800) for _ in range(44)]  # 2 full blocks + 12 tokens
    tokens, pre, moved = _turn(prefill, decode, first)
    assert moved == 3 * PER_BLOCK
    hits = _metric(decode, "baton_worker_prefix_cache_hit_tokens_total")
    # The next turn: the whole first turn (prompt and answer) plus the user's new message.
    second = first + tokens + [rng.randrange(3, 800) for _ in range(30)]  # 80 tokens: 5 blocks
    again, pre2, moved2 = _turn(prefill, decode, second)
    # The prefill worker computed only past its cached 2 blocks of the first prompt ...
    assert pre2.handle.layout.num_tokens == len(second) and len(pre2.handle.block_ids) == 5
    # ... and the decode worker already held the 2 full blocks of the first prompt and the
    # third one that its answer completed (the KV of 44 + 5 tokens): 3 of 5 blocks stay put.
    assert moved2 == 2 * PER_BLOCK
    assert _metric(decode, "baton_worker_prefix_cache_hit_tokens_total") - hits == 3 * 16
    # The same answer as from the other pair, which never saw this conversation.
    other = "grpc" if backend == "nixl" else "nixl"
    reference, _, cold_moved = _turn(pairs[f"prefill-{other}"], pairs[f"decode-{other}"], second)
    assert cold_moved == 5 * PER_BLOCK and reference == again
    wait_until(lambda: all_blocks_free(prefill), timeout=15, what="prefill blocks freed")
    wait_until(lambda: all_blocks_free(decode), timeout=15, what="decode blocks freed")


def test_a_prompt_held_whole_moves_no_byte_and_frees_the_prefill_copy(pairs: dict[str, WorkerProc]) -> None:
    prefill, decode = pairs["prefill-grpc"], pairs["decode-grpc"]
    rng = random.Random(5)
    prompt = [rng.randrange(3, 800) for _ in range(48)]  # exactly 3 blocks
    first, _, moved = _turn(prefill, decode, prompt)
    assert moved == 3 * PER_BLOCK
    again, pre, moved2 = _turn(prefill, decode, prompt)
    assert moved2 == 0 and again == first
    # The prefill worker recomputed only its last block (a prefill must compute a token).
    assert _metric(prefill, "baton_worker_prefix_cache_hit_tokens_total") >= 2 * 16
    # Nobody reads the prefill side's copy: Release frees it without waiting for the TTL.
    wait_until(lambda: all_blocks_free(prefill), timeout=5, what="prefill blocks freed")
    wait_until(lambda: all_blocks_free(decode), timeout=15, what="decode blocks freed")
