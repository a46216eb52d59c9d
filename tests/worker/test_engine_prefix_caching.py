"""Prefix caching changes no output: greedy tokens with caching on equal caching off and HF generate(),
for shared system prompts under 64 concurrent requests, multi-turn conversations, preemption with
eviction under memory pressure, and the prefill runner's handoff; and no block leaks."""

from __future__ import annotations

import random

import pytest
from baton_worker.engine import (
    DecodeEngine,
    EngineRequest,
    KvBlockPool,
    Prefilled,
    PrefillRunner,
    SamplingParams,
)
from test_engine_greedy import _model, _reference

SOURCE = "builtin://tiny"


def _idle(pool: KvBlockPool) -> None:
    assert pool.leaked_blocks() == []
    assert pool.num_free == pool.num_blocks  # free + cached = total


def _drain(engine: DecodeEngine, tokens: dict[str, list[int]]) -> None:
    for _ in range(5000):
        if not engine.has_work():
            return
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finished:
                assert out.finish_reason in ("stop", "length")
    raise AssertionError("engine did not finish")


def _shared_prompts(vocab: int, n: int, seed: int) -> list[tuple[int, ...]]:
    """n prompts, each one of three system prompts (20-70 tokens) plus its own question."""
    rng = random.Random(seed)
    systems = [[rng.randrange(3, vocab) for _ in range(k)] for k in (20, 45, 70)]
    return [
        tuple(rng.choice(systems) + [rng.randrange(3, vocab) for _ in range(rng.randrange(1, 12))])
        for _ in range(n)
    ]


def _serve(prompts: list[tuple[int, ...]], max_tokens: int, caching: bool, **pool_args: int):
    model = _model(SOURCE)
    pool = KvBlockPool.for_model(model, **pool_args)
    engine = DecodeEngine(model, pool, max_batch_size=64, prefix_caching=caching)
    tokens: dict[str, list[int]] = {}
    # Half arrive at once, the rest as the first ones run (they find the prefixes cached).
    half = len(prompts) // 2
    for i, p in enumerate(prompts[:half]):
        engine.add_request(EngineRequest(f"r{i}", p, SamplingParams(max_tokens=max_tokens)))
    for out in engine.step():
        tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
    for i, p in enumerate(prompts[half:], start=half):
        engine.add_request(EngineRequest(f"r{i}", p, SamplingParams(max_tokens=max_tokens)))
    _drain(engine, tokens)
    _idle(pool)
    return [tuple(tokens[f"r{i}"]) for i in range(len(prompts))], pool.prefix_stats()


def test_64_concurrent_requests_with_shared_system_prompts() -> None:
    prompts = _shared_prompts(_model(SOURCE).shape.vocab_size, 64, seed=7)
    on, stats = _serve(prompts, 8, True, num_blocks=1024, block_size=16)
    off, off_stats = _serve(prompts, 8, False, num_blocks=1024, block_size=16)
    assert on == off == _reference(SOURCE, prompts, [8] * len(prompts))
    assert stats.hit_tokens >= 16 * 20  # most later requests found their system prompt
    assert off_stats.queried_tokens == 0


def test_preemption_and_eviction_under_memory_pressure() -> None:
    prompts = _shared_prompts(_model(SOURCE).shape.vocab_size, 12, seed=3)
    on, stats = _serve(prompts, 10, True, num_blocks=48, block_size=4)
    assert stats.evicted_blocks > 0, "the pool should have been too small to keep every prefix"
    assert stats.hit_tokens > 0
    assert on == _reference(SOURCE, prompts, [10] * len(prompts))


def test_a_multi_turn_conversation_reuses_the_previous_turns() -> None:
    model = _model(SOURCE)
    pool = KvBlockPool.for_model(model, num_blocks=256, block_size=16)
    engine = DecodeEngine(model, pool, max_batch_size=8)
    rng = random.Random(1)
    prompt: tuple[int, ...] = tuple(rng.randrange(3, model.shape.vocab_size) for _ in range(50))
    previous_len = 0  # tokens of the previous turn whose KV was written
    for turn in range(3):
        tokens: dict[str, list[int]] = {}
        engine.add_request(EngineRequest(f"t{turn}", prompt, SamplingParams(max_tokens=10, ignore_eos=True)))
        before = pool.prefix_stats().hit_tokens
        _drain(engine, tokens)
        assert tuple(tokens[f"t{turn}"]) == _reference(SOURCE, [prompt], [10])[0]
        if turn:
            # Everything but the new turn's tail came from the cache (whole blocks only).
            hit = pool.prefix_stats().hit_tokens - before
            assert hit >= (previous_len // 16) * 16, (hit, previous_len)
        previous_len = len(prompt) + 9  # the last output token has no KV yet
        user = tuple(rng.randrange(3, model.shape.vocab_size) for _ in range(7))
        prompt = prompt + tuple(tokens[f"t{turn}"]) + user
    _idle(pool)


@pytest.mark.parametrize("prompt_logprobs", [None, 2])
def test_prefill_runner_reuses_its_cache_and_hands_off_the_same_kv(prompt_logprobs: int | None) -> None:
    model = _model(SOURCE)
    pre_pool = KvBlockPool.for_model(model, num_blocks=64, block_size=16)
    dec_pool = KvBlockPool.for_model(model, num_blocks=64, block_size=16)
    runner = PrefillRunner(model, pre_pool)
    engine = DecodeEngine(model, dec_pool, prefix_caching=False)
    rng = random.Random(9)
    system = [rng.randrange(3, model.shape.vocab_size) for _ in range(40)]
    prompts = [
        tuple(system + [rng.randrange(3, model.shape.vocab_size) for _ in range(k)]) for k in (3, 9, 17)
    ]
    cached = []
    for i, prompt in enumerate(prompts):
        sampling = SamplingParams(max_tokens=6, prompt_logprobs=prompt_logprobs)
        res = runner.prefill(f"p{i}", prompt, sampling)
        cached.append(res.cached_tokens)
        dst = dec_pool.allocate(len(res.block_ids))
        assert dst is not None
        dec_pool.storage[:, dst] = pre_pool.storage[:, list(res.block_ids)]
        assert runner.release(f"p{i}")
        engine.add_request(
            EngineRequest(
                f"p{i}", prompt, sampling, prefilled=Prefilled(tuple(dst), res.num_tokens, res.first_token)
            )
        )
    tokens: dict[str, list[int]] = {}
    _drain(engine, tokens)
    assert [tuple(tokens[f"p{i}"]) for i in range(3)] == _reference(SOURCE, prompts, [6] * 3)
    # Prompt logprobs need every position's logits: those prompts are computed whole.
    assert cached == ([0, 32, 32] if prompt_logprobs is None else [0, 0, 0])
    _idle(pre_pool)
    _idle(dec_pool)
