"""Greedy decoding of the paged, continuously batched engine equals transformers' generate().

64 concurrent requests with prompts of different lengths arrive at different steps; every output
must match HF generate() (batch 1, float32, CPU) token for token, for the tiny Llama and a Qwen2.
"""

from __future__ import annotations

import functools
import random

import pytest
import torch
from baton_worker.engine import (
    DecodeEngine,
    EngineRequest,
    KvBlockPool,
    Prefilled,
    PrefillRunner,
    SamplingParams,
    load_model,
)
from baton_worker.engine.builtin import save_builtin

torch.set_num_threads(1)


@functools.cache
def _model(source: str):
    return load_model(source)


def _reference(source: str, prompts: list[tuple[int, ...]], max_tokens: list[int]) -> list[tuple[int, ...]]:
    """HF generate() greedy outputs: one left-padded batch, each cut at its max_tokens and EOS."""
    model = _model(source)
    width = max(len(p) for p in prompts)
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.hf_model.generate(
        ids, attention_mask=mask, max_new_tokens=max(max_tokens), do_sample=False, pad_token_id=pad
    )
    refs = []
    for row, n in zip(out[:, width:].tolist(), max_tokens, strict=True):
        row = row[:n]
        for j, tok in enumerate(row):
            if tok in model.eos_token_ids:
                row = row[: j + 1]
                break
        refs.append(tuple(row))
    return refs


LENGTHS = (1, 2, 3, 5, 8, 13, 17, 31, 40, 64)


def _workload(vocab: int, n: int, seed: int, lengths=LENGTHS) -> list[tuple[int, tuple[int, ...], int]]:
    """(arrival step, prompt, max_tokens) for n requests of varied lengths."""
    rng = random.Random(seed)
    work = []
    for _ in range(n):
        length = rng.choice(lengths)
        prompt = tuple(rng.randrange(3, vocab) for _ in range(length))
        work.append((rng.randrange(0, 10), prompt, rng.randrange(3, 16)))
    return work


def _run(engine: DecodeEngine, work, max_steps: int = 2000) -> dict[str, list[int]]:
    """Feed requests at their arrival steps, step until done; return the tokens per request."""
    tokens: dict[str, list[int]] = {}
    finished: set[str] = set()
    step = 0
    while len(finished) < len(work):
        for i, (arrival, prompt, max_tokens) in enumerate(work):
            if arrival == step:
                engine.add_request(EngineRequest(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens)))
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finished:
                assert out.finish_reason in ("stop", "length")
                finished.add(out.request_id)
        step += 1
        assert step < max_steps, "engine did not finish"
    return tokens


@pytest.mark.parametrize("source", ["builtin://tiny", "builtin://tiny-qwen2", "builtin://tiny-mistral"])
def test_engine_greedy_64_concurrent_equals_hf_generate(source: str) -> None:
    model = _model(source)
    work = _workload(model.shape.vocab_size, 64, seed=11)
    pool = KvBlockPool.for_model(model, num_blocks=1024, block_size=16)
    engine = DecodeEngine(model, pool, max_batch_size=64)
    got = _run(engine, work)
    refs = _reference(source, [w[1] for w in work], [w[2] for w in work])
    for i, ref in enumerate(refs):
        assert tuple(got[f"r{i}"]) == ref, f"request r{i}"
    assert pool.num_free == pool.num_blocks
    assert not engine.has_work()


def test_engine_greedy_with_preemption_equals_hf_generate() -> None:
    """A pool too small for the whole batch: requests wait, running ones preempt the newest,
    and every output is still exactly HF's."""
    source = "builtin://tiny"
    model = _model(source)
    work = _workload(model.shape.vocab_size, 12, seed=5, lengths=(1, 4, 9, 17, 30))
    pool = KvBlockPool.for_model(model, num_blocks=16, block_size=4)
    engine = DecodeEngine(model, pool, max_batch_size=8)
    max_waiting = 0
    tokens: dict[str, list[int]] = {}
    for i, (_, prompt, max_tokens) in enumerate(work):
        engine.add_request(EngineRequest(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens)))
    for _ in range(5000):
        if not engine.has_work():
            break
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
        max_waiting = max(max_waiting, engine.stats().waiting)
    assert max_waiting > 0, "the pool should have been too small for everyone at once"
    refs = _reference(source, [w[1] for w in work], [w[2] for w in work])
    for i, ref in enumerate(refs):
        assert tuple(tokens[f"r{i}"]) == ref, f"request r{i}"
    assert pool.num_free == pool.num_blocks


def test_engine_disaggregated_handoff_equals_local(tmp_path) -> None:
    """Prefill in one pool, copy the blocks' bytes into another pool (what the KV transfer does),
    continue there with Prefilled: same tokens as HF. The model comes from a plain HF directory."""
    model_dir = save_builtin("tiny", tmp_path / "tiny")
    model = load_model(str(model_dir))
    assert model.shape.num_kv_heads == 8
    prefill_pool = KvBlockPool.for_model(model, num_blocks=64, block_size=16)
    decode_pool = KvBlockPool.for_model(model, num_blocks=64, block_size=16)
    runner = PrefillRunner(model, prefill_pool)
    engine = DecodeEngine(model, decode_pool)
    rng = random.Random(3)
    prompts = [tuple(rng.randrange(3, model.shape.vocab_size) for _ in range(n)) for n in (5, 33, 70)]
    for i, prompt in enumerate(prompts):
        res = runner.prefill(f"d{i}", prompt, SamplingParams(max_tokens=12))
        dst = decode_pool.allocate(len(res.block_ids))
        decode_pool.storage[:, dst] = prefill_pool.storage[:, list(res.block_ids)]
        assert runner.release(f"d{i}") and not runner.release(f"d{i}")
        pre = Prefilled(tuple(dst), res.num_tokens, res.first_token)
        engine.add_request(EngineRequest(f"d{i}", prompt, SamplingParams(max_tokens=12), prefilled=pre))
    tokens: dict[str, list[int]] = {}
    while engine.has_work():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
    refs = _reference("builtin://tiny", prompts, [12] * len(prompts))
    for i, ref in enumerate(refs):
        assert tuple(tokens[f"d{i}"]) == ref
    assert prefill_pool.num_free == prefill_pool.num_blocks
    assert decode_pool.num_free == decode_pool.num_blocks
