"""The OpenAI parameters evaluation and benchmark tools send, on a real `baton up` stack, with the
official openai client: logprobs (equal to transformers' log_softmax of the same forward within
1e-4, for prompt and output tokens, prefilled remotely or locally), echo with max_tokens 0, n
and best_of, penalties and min_tokens, seeds, /tokenize and /detokenize, max_model_len."""

from __future__ import annotations

import functools

import httpx
import openai
import pytest
import torch
from router_stack import MODEL, tokenizer

pytestmark = pytest.mark.timeout(600)
TOL = 1e-4
PROMPT = "The KV cache moves from prefill to decode"


@pytest.fixture(scope="module")
def stacks(stack_factory):  # type: ignore[no-untyped-def]
    # One stack prefills every prompt remotely (logprobs come from the prefill worker's reply
    # for the first token), the other prefills every prompt on the decode worker.
    remote = stack_factory("--prefill", "1", "--decode", "1", "--local-prefill-max-tokens", "0")
    local = stack_factory("--prefill", "1", "--decode", "1", "--local-prefill-max-tokens", "100000")
    return {"remote": remote, "local": local}


def client(stack) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=stack.url, api_key="unused", max_retries=0, timeout=120)


@functools.cache
def hf_model():  # type: ignore[no-untyped-def]
    from baton_worker.engine import load_model

    return load_model(MODEL).hf_model


def reference(ids: list[int]) -> torch.Tensor:
    """log_softmax of transformers' forward over ``ids`` [T, vocab] (float32, one process)."""
    with torch.inference_mode():
        return torch.log_softmax(hf_model()(torch.tensor([ids])).logits[0].float(), dim=-1)


def text_of(token_id: int) -> str:
    return tokenizer().decode([token_id])


@pytest.mark.parametrize("where", ["remote", "local"])
def test_completion_logprobs_of_prompt_and_output_equal_transformers(stacks, where) -> None:  # type: ignore[no-untyped-def]
    prompt_ids = tokenizer().encode(PROMPT)
    r = client(stacks[where]).completions.create(
        model=MODEL,
        prompt=prompt_ids,
        max_tokens=6,
        temperature=0,
        logprobs=3,
        echo=True,
        extra_body={"ignore_eos": True},
    )
    lp = r.choices[0].logprobs
    assert r.usage.completion_tokens == 6 and len(lp.tokens) == len(prompt_ids) + 6
    all_ids = prompt_ids + _greedy(prompt_ids, 6)
    ref = reference(all_ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for t in range(1, len(all_ids)):
        assert abs(lp.token_logprobs[t] - float(ref[t - 1, all_ids[t]])) < TOL, (t, where)
        best = torch.topk(ref[t - 1], 3).indices.tolist()
        assert list(lp.top_logprobs[t]) == [text_of(i) for i in best][: len(lp.top_logprobs[t])]
    assert lp.tokens == [text_of(i) for i in all_ids]
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert r.choices[0].text.startswith(tokenizer().decode(prompt_ids))


@functools.cache
def _greedy_cache(prompt: tuple[int, ...], n: int) -> tuple[int, ...]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(torch.argmax(reference(ids)[-1])))
    return tuple(ids[len(prompt) :])


def _greedy(prompt: list[int], n: int) -> list[int]:
    return list(_greedy_cache(tuple(prompt), n))


def test_echo_with_max_tokens_zero_scores_the_prompt_alone(stacks) -> None:  # type: ignore[no-untyped-def]
    prompt_ids = tokenizer().encode(PROMPT)
    r = client(stacks["remote"]).completions.create(
        model=MODEL, prompt=prompt_ids, max_tokens=0, echo=True, logprobs=1, temperature=0
    )
    c = r.choices[0]
    assert r.usage.completion_tokens == 0 and c.finish_reason == "length"
    assert c.text == tokenizer().decode(prompt_ids)
    ref = reference(prompt_ids)
    assert len(c.logprobs.token_logprobs) == len(prompt_ids)
    for t in range(1, len(prompt_ids)):
        assert abs(c.logprobs.token_logprobs[t] - float(ref[t - 1, prompt_ids[t]])) < TOL


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_with_top_alternatives(stacks, stream) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": [{"type": "text", "text": "Which pool decodes?"}]}]
    kw = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": 5,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    c = client(stacks["remote"])
    if stream:
        entries = []
        for chunk in c.chat.completions.create(stream=True, **kw):
            if chunk.choices and chunk.choices[0].logprobs:
                entries += chunk.choices[0].logprobs.content
    else:
        entries = c.chat.completions.create(**kw).choices[0].logprobs.content
    whole = c.chat.completions.create(**kw).choices[0]
    assert [e.token for e in entries] == [e.token for e in whole.logprobs.content]
    assert len(entries) == 5 and all(len(e.top_logprobs) == 2 for e in entries)
    for e in entries:
        # Greedy: the chosen token is the most likely one.
        assert e.bytes == list(e.token.encode()) and abs(e.top_logprobs[0].logprob - e.logprob) < TOL


def test_n_choices_with_a_seed_are_reproducible_and_distinct(stacks) -> None:  # type: ignore[no-untyped-def]
    c = client(stacks["remote"])
    kw = {"model": MODEL, "prompt": PROMPT, "max_tokens": 12, "temperature": 1.0, "seed": 11, "n": 3}
    first = c.completions.create(**kw)
    again = c.completions.create(**kw)
    texts = [ch.text for ch in sorted(first.choices, key=lambda ch: ch.index)]
    assert [ch.index for ch in sorted(first.choices, key=lambda ch: ch.index)] == [0, 1, 2]
    assert texts == [ch.text for ch in sorted(again.choices, key=lambda ch: ch.index)]
    assert len(set(texts)) > 1, texts
    # Choice i samples with seed + i: it is what a single request with that seed gives.
    single = c.completions.create(**{**kw, "n": 1, "seed": 12}).choices[0].text
    assert single == texts[1]
    assert first.usage.completion_tokens == sum(
        c.completions.create(**{**kw, "n": 1, "seed": 11 + i}).usage.completion_tokens for i in range(3)
    )
    # Streamed: every choice's chunks carry its index, and the texts are the same.
    streamed = ["", "", ""]
    for chunk in c.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            streamed[ch.index] += ch.text
    assert streamed == texts


def test_best_of_returns_the_most_likely_choice(stacks) -> None:  # type: ignore[no-untyped-def]
    c = client(stacks["local"])
    kw = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 1.0, "seed": 5}
    best = c.completions.create(best_of=3, n=1, **kw)
    assert len(best.choices) == 1 and best.choices[0].logprobs is None
    candidates = [c.completions.create(**{**kw, "seed": 5 + i}, logprobs=0).choices[0] for i in range(3)]
    winner = max(candidates, key=lambda ch: sum(ch.logprobs.token_logprobs))
    assert best.choices[0].text == winner.text
    assert best.usage.completion_tokens == sum(len(ch.logprobs.tokens) for ch in candidates)


def test_penalties_and_min_tokens_reach_the_engine(stacks) -> None:  # type: ignore[no-untyped-def]
    from baton_worker.engine import DecodeEngine, EngineRequest, KvBlockPool, SamplingParams, load_model

    prompt_ids = tokenizer().encode(PROMPT)
    params = {"presence_penalty": 2.0, "frequency_penalty": 0.5, "repetition_penalty": 1.3, "min_tokens": 10}
    model = load_model(MODEL)
    engine = DecodeEngine(model, KvBlockPool.for_model(model, num_blocks=64, block_size=16))
    engine.add_request(EngineRequest("r", tuple(prompt_ids), SamplingParams(max_tokens=24, **params)))
    expected: list[int] = []
    while engine.has_work():
        for out in engine.step():
            expected += out.new_token_ids
    plain = client(stacks["local"]).completions.create(
        model=MODEL, prompt=prompt_ids, max_tokens=24, temperature=0, logprobs=0
    )
    for where in ("remote", "local"):
        r = client(stacks[where]).completions.create(
            model=MODEL, prompt=prompt_ids, max_tokens=24, temperature=0, logprobs=0, extra_body=params
        )
        assert r.usage.completion_tokens == len(expected) >= 10, where
        assert r.choices[0].logprobs.tokens == [text_of(i) for i in expected], where
    assert plain.choices[0].logprobs.tokens != r.choices[0].logprobs.tokens  # the penalties changed it


def test_tokenize_detokenize_and_max_model_len(stacks) -> None:  # type: ignore[no-untyped-def]
    base = stacks["remote"].url.removesuffix("/v1")
    ids = tokenizer().encode(PROMPT)
    r = httpx.post(f"{base}/tokenize", json={"model": MODEL, "prompt": PROMPT}, timeout=10).json()
    assert r["tokens"] == ids and r["count"] == len(ids) and r["max_model_len"] > 0
    chat = httpx.post(
        f"{base}/tokenize", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, timeout=10
    ).json()
    assert chat["count"] == len(chat["tokens"]) > 1
    back = httpx.post(f"{base}/detokenize", json={"model": MODEL, "tokens": ids}, timeout=10).json()
    assert back["prompt"] == tokenizer().decode(ids)
    bad = httpx.post(f"{base}/detokenize", json={"model": MODEL, "tokens": ["x"]}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    models = client(stacks["remote"]).models.list().data
    assert models[0].model_extra["max_model_len"] == r["max_model_len"]
    usage = client(stacks["remote"]).completions.create(model=MODEL, prompt=PROMPT, max_tokens=1).usage
    assert usage.prompt_tokens == r["count"]
