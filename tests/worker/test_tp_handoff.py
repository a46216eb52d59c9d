"""Tensor parallelism end to end, between real processes: prefill TP N -> decode TP M.

Each group is rank 0 plus N-1 rank processes joined with torch.distributed (gloo on this CPU),
every rank holding its own shard of the model and of the KV pool, registered with NIXL. The
prefill group returns a KvHandle describing every rank's shard; every decode rank pulls its own
KV heads directly from the prefill ranks holding them (NIXL READ; agent metadata from each
prefill rank's own gRPC endpoint). Greedy output must equal single-process generation
(transformers' generate on the unsharded model).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator

import pytest
import torch
from baton_worker.engine import SamplingParams, load_model
from baton_worker.engine.tp_group import TpGroupError, TpSpec
from baton_worker.engine.tp_host import TpHost
from baton_worker.kv.tp_plan import plan_pulls
from baton_worker.rpc import pb2

torch.set_num_threads(1)

SOURCE = "builtin://tiny"  # Llama, 4 layers, 8 KV heads of dim 32, float32
PROMPTS = (tuple(range(7, 44)), (11, 5, 300, 29, 8))  # 37 tokens (3 blocks) and 5 tokens (1 block)
MAX_TOKENS = 8
NUM_BLOCKS = 32
PREFILL_SIZES = (1, 2, 4)
DECODE_SIZES = (1, 2)


@functools.cache
def _reference(prompt: tuple[int, ...]) -> list[int]:
    model = load_model(SOURCE)
    out = model.hf_model.generate(
        torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module")
def groups() -> Iterator[dict[tuple[str, int], TpHost]]:
    """Prefill groups TP 1, 2, 4 and decode groups TP 1, 2 (10 processes), started side by side."""
    specs = [("prefill", n) for n in PREFILL_SIZES] + [("decode", m) for m in DECODE_SIZES]
    hosts: dict[tuple[str, int], TpHost] = {}
    try:
        for role, n in specs:
            spec = TpSpec(SOURCE, n, role, f"{role}-tp{n}-{uuid.uuid4().hex[:8]}", num_blocks=NUM_BLOCKS)
            hosts[(role, n)] = TpHost.spawn(spec)
        for host in hosts.values():
            host.wait_ready()
        yield hosts
    finally:
        for host in hosts.values():
            host.stop()
        for host in hosts.values():
            host.close()


@pytest.mark.parametrize(("prefill_tp", "decode_tp"), [(2, 1), (1, 2), (4, 2)])
def test_prefill_tp_n_to_decode_tp_m_equals_single_process(
    groups: dict[tuple[str, int], TpHost], prefill_tp: int, decode_tp: int
) -> None:
    prefill, decode = groups[("prefill", prefill_tp)], groups[("decode", decode_tp)]
    plan = plan_pulls(8, prefill_tp, decode_tp)
    for i, prompt in enumerate(PROMPTS):
        rid = f"p{prefill_tp}-d{decode_tp}-{i}"
        sampling = SamplingParams(max_tokens=MAX_TOKENS)
        pre = prefill.prefill(rid, list(prompt), sampling)

        handle = pb2.KvHandle.FromString(pre.handle)
        assert [(s.rank, s.head_start, s.head_end) for s in handle.shards] == [
            (r, r * 8 // prefill_tp, (r + 1) * 8 // prefill_tp) for r in range(prefill_tp)
        ]
        assert len({s.metadata_address for s in handle.shards}) == prefill_tp  # one endpoint per rank
        assert len({s.agent_name for s in handle.shards}) == prefill_tp

        out = decode.generate(rid, list(prompt), sampling, pre)
        assert out.token_ids == _reference(prompt), f"prefill TP {prefill_tp} -> decode TP {decode_tp}"

        # Every decode rank read its own heads, from exactly the prefill ranks the plan names.
        blocks = -(-len(prompt) // 16)
        per_head = 4 * blocks * 2 * 16 * 32 * 4  # layers x blocks x K,V x block x dim x float32
        assert [p.rank for p in out.pulls] == list(range(decode_tp))
        assert [p.sources for p in out.pulls] == [len(plan[d]) for d in range(decode_tp)]
        assert [p.bytes for p in out.pulls] == [per_head * 8 // decode_tp] * decode_tp

        assert prefill.release(rid) is True
        assert prefill.release(rid) is False
    assert prefill.free_blocks() == NUM_BLOCKS
    assert decode.free_blocks() == NUM_BLOCKS


def test_decode_tp_group_local_prefill_equals_single_process(groups: dict[tuple[str, int], TpHost]) -> None:
    # Conditional disaggregation on a TP 2 decode worker: the sharded forward, prefill and decode.
    out = groups[("decode", 2)].generate("local-0", list(PROMPTS[0]), SamplingParams(max_tokens=MAX_TOKENS))
    assert out.token_ids == _reference(PROMPTS[0])
    assert out.pulls == []


def test_impossible_tp_size_is_refused_naming_the_numbers() -> None:
    # tiny-qwen2 has 4 KV heads: 8 ranks cannot each hold whole KV heads. Refused before any
    # rank process starts, so it is quick.
    spec = TpSpec("builtin://tiny-qwen2", 8, "prefill", "bad-" + uuid.uuid4().hex[:8], num_blocks=4)
    with pytest.raises(TpGroupError, match=r"tensorParallelSize: 8 does not divide the model's 4 KV heads"):
        TpHost.start(spec)
    with pytest.raises(TpGroupError, match=r"3 is not one of 1, 2, 4, 8"):
        TpHost.start(TpSpec(SOURCE, 3, "decode", "bad-" + uuid.uuid4().hex[:8], num_blocks=4))
