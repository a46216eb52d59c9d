"""Logprobs, prompt logprobs, penalties and min_tokens of the engine, against references.

Logprobs must equal transformers' log_softmax of the same forward (float32, the tiny model)
within 1e-4, for prompt tokens (echo) and generated ones, on the local path (the decode engine
prefills) and the disaggregated one (the prefill runner samples the first token, the decode
engine continues from the handed-over KV). Penalties are checked against a plain reference loop
over transformers' forward.
"""

from __future__ import annotations

import functools
from collections import Counter

import pytest
import torch
from baton_worker.engine import (
    DecodeEngine,
    EngineRequest,
    KvBlockPool,
    Prefilled,
    PrefillRunner,
    SamplingParams,
)
from baton_worker.engine import load_model as _load

torch.set_num_threads(1)
PROMPT = (1, 17, 254, 9, 33, 71, 5, 120, 64)
TOL = 1e-4


@functools.cache
def model():
    return _load("builtin://tiny")


def hf_log_softmax(tokens: list[int]) -> torch.Tensor:
    """transformers' forward over ``tokens``: log_softmax of every position's logits [T, vocab]."""
    with torch.inference_mode():
        logits = model().hf_model(torch.tensor([tokens])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def run(engine: DecodeEngine, request: EngineRequest) -> tuple[list[int], list, tuple | None]:
    engine.add_request(request)
    ids, lps, prompt = [], [], None
    for _ in range(10_000):
        for out in engine.step():
            ids += out.new_token_ids
            lps += out.logprobs
            prompt = out.prompt_logprobs if out.prompt_logprobs is not None else prompt
            if out.finished:
                return ids, lps, prompt
    raise AssertionError("the engine did not finish")


def engine() -> DecodeEngine:
    return DecodeEngine(
        model(), KvBlockPool.for_model(model(), num_blocks=64, block_size=16), max_batch_size=4
    )


def check_against_hf(ids: list[int], lps: list, prompt_lps: tuple | None, top: int) -> None:
    ref = hf_log_softmax([*PROMPT, *ids])
    assert [lp.token_id for lp in lps] == ids
    for k, (tok, lp) in enumerate(zip(ids, lps, strict=True)):
        pos = len(PROMPT) - 1 + k
        assert abs(lp.logprob - float(ref[pos, tok])) < TOL, (k, lp.logprob, float(ref[pos, tok]))
        values, best = torch.topk(ref[pos], top)
        assert [t for t, _ in lp.top] == best.tolist()
        assert all(abs(v - float(r)) < TOL for (_, v), r in zip(lp.top, values, strict=True))
    if prompt_lps is not None:
        assert len(prompt_lps) == len(PROMPT) and prompt_lps[0] is None
        for t in range(1, len(PROMPT)):
            assert prompt_lps[t].token_id == PROMPT[t]
            assert abs(prompt_lps[t].logprob - float(ref[t - 1, PROMPT[t]])) < TOL


def test_logprobs_of_prompt_and_output_equal_transformers_log_softmax_locally() -> None:
    sp = SamplingParams(max_tokens=8, logprobs=3, prompt_logprobs=2, ignore_eos=True)
    ids, lps, prompt_lps = run(engine(), EngineRequest("r", PROMPT, sp))
    assert len(ids) == 8 and len(lps) == 8
    check_against_hf(ids, lps, prompt_lps, top=3)
    assert all(len(lp.top) == 2 for lp in prompt_lps[1:])


def test_logprobs_survive_the_handover_from_the_prefill_runner() -> None:
    m = model()
    sp = SamplingParams(max_tokens=6, logprobs=2, prompt_logprobs=0, ignore_eos=True)
    prefill_pool = KvBlockPool.for_model(m, num_blocks=16, block_size=16)
    result = PrefillRunner(m, prefill_pool).prefill("r", PROMPT, sp)
    assert result.first_logprob is not None and result.prompt_logprobs is not None
    dec = engine()
    blocks = dec.pool.allocate(dec.pool.blocks_needed(len(PROMPT) + 1))
    for src, dst in zip(result.block_ids, blocks, strict=False):
        dec.pool.storage[:, dst] = prefill_pool.storage[:, src]
    pre = Prefilled(
        tuple(blocks), len(PROMPT), result.first_token, result.first_logprob, result.prompt_logprobs
    )
    ids, lps, prompt_lps = run(dec, EngineRequest("r", PROMPT, sp, prefilled=pre))
    check_against_hf(ids, lps, prompt_lps, top=2)
    local = run(engine(), EngineRequest("l", PROMPT, sp))
    assert ids == local[0]


def reference_penalized(sp: SamplingParams, n: int) -> list[int]:
    """Greedy decoding over transformers' forward with the penalties written out plainly."""
    tokens = list(PROMPT)
    out: list[int] = []
    for _ in range(n):
        with torch.inference_mode():
            logits = model().hf_model(torch.tensor([tokens])).logits[0, -1].float().tolist()
        for t in set(tokens):
            logits[t] = (
                logits[t] / sp.repetition_penalty if logits[t] > 0 else logits[t] * sp.repetition_penalty
            )
        for t, c in Counter(out).items():
            logits[t] -= sp.presence_penalty + sp.frequency_penalty * c
        if len(out) < sp.min_tokens:
            for t in sp.stop_token_ids:
                logits[t] = float("-inf")
        tok = max(range(len(logits)), key=logits.__getitem__)
        out.append(tok)
        tokens.append(tok)
        if tok in sp.stop_token_ids:
            break
    return out


@pytest.mark.parametrize(
    "penalties",
    [
        {"presence_penalty": 2.0},
        {"frequency_penalty": 2.0},
        {"frequency_penalty": -2.0},
        {"repetition_penalty": 1.8},
        {"presence_penalty": -0.5, "frequency_penalty": 0.4, "repetition_penalty": 0.7},
    ],
)
def test_penalties_match_the_reference(penalties: dict[str, float]) -> None:
    sp = SamplingParams(max_tokens=40, ignore_eos=True, **penalties)
    ids, _, _ = run(engine(), EngineRequest("r", PROMPT, sp))
    assert ids == reference_penalized(sp, 40)
    # They change something: without them the greedy output differs (it repeats by token 34).
    plain, _, _ = run(engine(), EngineRequest("p", PROMPT, SamplingParams(max_tokens=40, ignore_eos=True)))
    assert plain != ids


def test_min_tokens_holds_back_stop_tokens() -> None:
    plain, _, _ = run(engine(), EngineRequest("p", PROMPT, SamplingParams(max_tokens=8, ignore_eos=True)))
    stop_on_first = SamplingParams(max_tokens=8, stop_token_ids=(plain[0],), ignore_eos=True)
    ids, _, _ = run(engine(), EngineRequest("s", PROMPT, stop_on_first))
    assert ids == [plain[0]]  # without min_tokens it stops at once
    held = SamplingParams(max_tokens=8, stop_token_ids=(plain[0],), ignore_eos=True, min_tokens=5)
    ids, _, _ = run(engine(), EngineRequest("m", PROMPT, held))
    assert len(ids) >= 5 and plain[0] not in ids[:5]
    assert ids == reference_penalized(held, 8)


def test_seeded_sampling_with_penalties_is_reproducible() -> None:
    sp = SamplingParams(
        max_tokens=10, temperature=0.9, seed=7, presence_penalty=0.5, ignore_eos=True, logprobs=1
    )
    first = run(engine(), EngineRequest("a", PROMPT, sp))
    second = run(engine(), EngineRequest("b", PROMPT, sp))
    assert first[0] == second[0]
    assert [lp.logprob for lp in first[1]] == [lp.logprob for lp in second[1]]
