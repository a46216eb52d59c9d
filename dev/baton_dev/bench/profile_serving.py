"""`baton profile`'s serving figures: what the whole stack adds to the engine's own times.

A `baton up` (1 prefill + 1 decode worker, every prompt prefilled remotely) serves:

- one request at a time with the shortest prompt length: its median time to first token less the
  engine's prefill time for that length is the router's share (HTTP, tokenizing, the Prefill call);
- ``b`` streams at once for each batch size ``b`` and prompt length: each stream's time per
  output token after the first is a decode step as served (engine step, the token's trip over
  gRPC and the router, and whatever else the processes of the stack cost each other on this
  host), which is what an inter-token-latency target is checked against.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from baton_dev.bench.serve import MODES, Sample, _Stack, drive

WORDS = "prefill decode router cache block token stream batch handle worker pool queue".split()


def _prompt(words: int, salt: int) -> str:
    return f"{salt}: " + " ".join(WORDS[(salt + k * 5) % len(WORDS)] for k in range(words))


def _words_for(tokens: int) -> int:
    return max(1, int(tokens / 1.5))  # the builtin tokenizer spends about 1.5 tokens a word


def _run(url: str, model: str, prompts: list[str], max_tokens: int) -> list[Sample]:
    samples, _ = asyncio.run(drive(url, model, prompts, [0.0] * len(prompts), max_tokens))
    bad = [s.error for s in samples if not s.ok]
    if bad:
        raise RuntimeError(f"the stack failed requests while profiling: {bad[:3]}")
    return samples


def serving_figures(
    model: str,
    device: str,
    prefill_seconds: dict[int, float],
    batches: list[int],
    contexts: list[int],
    repeats: int,
    salt: int = 0,
) -> tuple[float, list[dict[str, Any]]]:
    """(router seconds, served decode points) measured through a `baton up` stack."""
    stack = _Stack(model, device, MODES["disaggregated"], 4096, [], 300.0, False)
    try:
        _run(stack.url, model, [_prompt(20, salt + i) for i in range(4)], 8)  # warm-up
        # The shortest prompt: the router's share is the largest part of its time to first token.
        n, seconds = min(prefill_seconds.items())
        ttft = [
            _run(stack.url, model, [_prompt(_words_for(n), salt + 100 * n + i)], 2)[0].ttft_s
            for i in range(max(3, repeats))
        ]
        router_s = max(0.0, statistics.median(ttft) - seconds)
        rows = []
        for context in contexts:
            for b in batches:
                # At least ``repeats`` streams' figures for every batch size (rounds of b streams).
                tpot: list[float] = []
                for r in range(-(-repeats // b)):
                    seed = salt + 10_000 * b + 100 * r + context
                    prompts = [_prompt(_words_for(context), seed + i) for i in range(b)]
                    tpot += [s.tpot_s for s in _run(stack.url, model, prompts, 33)]
                rows.append(
                    {
                        "tp": 1,
                        "batch": b,
                        "context_tokens": context,
                        "step_seconds": round(statistics.median(tpot), 6),
                    }
                )
        return round(router_s, 6), rows
    finally:
        stack.stop()
