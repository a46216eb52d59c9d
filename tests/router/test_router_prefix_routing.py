"""KV-aware routing through `baton up` (1 prefill + 2 decode workers): each next turn of a
conversation goes to the decode worker holding its previous turns, the workers reuse their
cached prefixes, and every answer equals single-process generation."""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from polling import wait_until
from router_stack import MODEL, reference_generate, tokenizer

pytestmark = pytest.mark.timeout(600)
WORDS = "prefill decode router cache block token stream batch handle worker pool queue".split()


@pytest.fixture(scope="module")
def stack(stack_factory):  # type: ignore[no-untyped-def]
    return stack_factory("--prefill", "1", "--decode", "2", "--local-prefill-max-tokens", "0", "--no-restart")


def _metrics(url: str) -> dict[str, float]:
    text = httpx.get(url, timeout=10).text
    out: dict[str, float] = {}
    for m in re.finditer(r"^(baton_\w+)(\{[^}]*\})? (\S+)$", text, re.M):
        out[m.group(1) + (m.group(2) or "")] = out.get(m.group(1) + (m.group(2) or ""), 0.0) + float(
            m.group(3)
        )
    return out


def test_each_turn_goes_to_the_decode_worker_holding_the_conversation(stack) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=stack.url, api_key="unused", max_retries=0, timeout=120)
    router = stack.url.removesuffix("/v1") + "/metrics"
    workers = [
        line.split("metrics=")[1] for line in stack.lines if re.match(r"baton up: decode-\d .*metrics=", line)
    ]
    assert len(workers) == 2
    system = "System: " + " ".join(WORDS[(k * 5) % len(WORDS)] for k in range(120)) + "\n"
    histories = [system, system]
    sent: list[str] = []
    answers: list[str] = []
    for turn in range(3):
        for c in range(2):
            prompt = f"{histories[c]}User {c}: turn {turn} " + " ".join(
                WORDS[(turn + c + k) % 12] for k in range(9)
            )
            prompt += "\nAssistant:"
            view_before = _metrics(router).get('baton_router_prefix_view_blocks{role="decode"}', 0.0)
            before = _metrics(router)
            out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
            after = _metrics(router)
            sent.append(prompt)
            answers.append(out.choices[0].text)
            histories[c] = prompt + out.choices[0].text + "\n"
            hit = 'baton_router_prefix_placement_total{reason="prefix_hit",role="decode"}'
            if turn > 0:
                # The router knew the decode worker holding this conversation and chose it.
                assert after.get(hit, 0.0) - before.get(hit, 0.0) == 1
                chosen = 'baton_router_prefix_cached_tokens_total{role="decode"}'
                best = 'baton_router_prefix_best_tokens_total{role="decode"}'
                assert after[chosen] - before[chosen] == after[best] - before[best] > 0
                # OpenAI's usage says how much of the prompt came from the cache.
                assert out.usage.prompt_tokens_details.cached_tokens >= 8 * 16
            # Before the next turn, the router has learned what this one left in the cache.
            wait_until(
                lambda v=view_before: (
                    _metrics(router).get('baton_router_prefix_view_blocks{role="decode"}', 0.0) > v
                ),
                timeout=15,
                what="the router's view of the decode caches to grow",
            )
    # The two decode workers reused what they held instead of pulling it again.
    hits = sum(
        _metrics(f"http://{w}/metrics").get('baton_worker_prefix_cache_hit_tokens_total{role="decode"}', 0.0)
        for w in workers
    )
    assert hits >= 4 * 16 * 8  # 4 later turns, each at least the 8 blocks of the system prompt
    # Nothing waits in the router now: its own part of the queue (what the autoscaler adds up
    # over several routers) is exported and 0.
    assert _metrics(router)['baton_router_queue_depth{role="decode"}'] == 0.0
    tok = tokenizer()
    ref = reference_generate([tok.encode(p) for p in sent], max_tokens=8, temperature=0.0)
    assert answers == [tok.decode(r) for r in ref]
