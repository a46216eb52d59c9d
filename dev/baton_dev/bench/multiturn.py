"""`baton bench serve --workload multiturn`: multi-turn conversations with a long shared system
prompt (and, with --private-words, a document of each conversation's own), served by 1 prefill + 2 decode workers with prefix caching on and KV-aware routing,
caching on with load-only routing, and caching off, side by side in one run.

Every conversation starts with the same system prompt (>= 1k tokens on the tiny model) and its
own first question; each next turn sends the whole conversation so far (previous prompt, the
answer, a new question). Turns run in rounds: every conversation's turn k, staggered over a
second, then turn k+1, so each round's figures come from the router's metrics before and after
it: TTFT p50/p90, KV bytes moved per request, how much of each prompt the chosen workers held
in their prefix caches, and how that compares with always choosing the worker holding the most
(the oracle).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
import urllib.request
from dataclasses import asdict, dataclass

import httpx

from baton_dev.bench.serve import Sample, _Stack, one_request, percentile

BASE = ["--prefill", "1", "--decode", "2", "--local-prefill-max-tokens", "0"]
SETUPS = {
    "cache+kv-aware": BASE,
    "cache+load-only": [*BASE, "--prefix-weight", "0"],
    "no-cache": [*BASE, "--no-prefix-caching", "--prefix-weight", "0"],
}
WORDS = "prefill decode router cache block token stream batch handle worker pool queue".split()


@dataclass(frozen=True)
class RoundFigures:
    turn: int
    requests: int
    ok: int
    prompt_tokens_mean: float
    ttft_p50_ms: float
    ttft_p90_ms: float
    kv_bytes_per_request: float
    prefill_hit_rate: float  # prompt tokens the prefill workers found in their caches
    decode_hit_rate: float  # prompt tokens the decode workers held (not pulled again)
    decode_cached_fraction: float  # router's view: of prompt tokens, held by the chosen decode worker
    decode_vs_oracle: float  # router's view: decode-cached tokens / what the best-holding worker had


def counters(url: str, workers: dict[str, str]) -> dict[str, float]:
    """The router's and the workers' counters, summed over labels other than ``role``."""
    out: dict[str, float] = {}
    for address in [url.rsplit("/v1", 1)[0], *(f"http://{m}" for m in workers.values())]:
        _scrape(address, out)
    return out


def _scrape(base: str, out: dict[str, float]) -> None:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        m = re.match(r"^(baton_[a-z_]+?)(?:\{([^}]*)\})? (\S+)$", line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        role = re.search(r'role="(\w+)"', labels)
        key = f"{name}:{role.group(1)}" if role else name
        out[key] = out.get(key, 0.0) + value


def round_figures(
    turn: int, results: list[Sample], before: dict[str, float], after: dict[str, float]
) -> RoundFigures:
    """One round's figures from its turns and the router's counters around it (pure)."""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    ok = [r for r in results if r.ok]
    prompt = sum(r.prompt_tokens for r in ok) or 1
    best = delta("baton_router_prefix_best_tokens_total:decode")
    return RoundFigures(
        turn=turn,
        requests=len(results),
        ok=len(ok),
        prompt_tokens_mean=round(prompt / max(1, len(ok)), 1),
        ttft_p50_ms=round(percentile([r.ttft_s for r in ok], 50) * 1000, 1),
        ttft_p90_ms=round(percentile([r.ttft_s for r in ok], 90) * 1000, 1),
        kv_bytes_per_request=round(delta("baton_kv_transfer_bytes_sum") / max(1, len(ok)), 1),
        prefill_hit_rate=round(delta("baton_worker_prefix_cache_hit_tokens_total:prefill") / prompt, 3),
        decode_hit_rate=round(delta("baton_worker_prefix_cache_hit_tokens_total:decode") / prompt, 3),
        decode_cached_fraction=round(delta("baton_router_prefix_cached_tokens_total:decode") / prompt, 3),
        decode_vs_oracle=round(delta("baton_router_prefix_cached_tokens_total:decode") / best, 3)
        if best
        else 1.0,
    )


async def converse(
    url: str,
    workers: dict[str, str],
    model: str,
    conversations: int,
    turns: int,
    system_words: int,
    private_words: int,
    max_tokens: int,
    seed: int,
) -> list[RoundFigures]:
    rng = random.Random(seed)
    system = "System: " + " ".join(rng.choice(WORDS) for _ in range(system_words)) + "\n"
    # Each conversation's own document (RAG-like) after the shared system prompt.
    history = [
        system + (f"Document {c}: " + " ".join(rng.choice(WORDS) for _ in range(private_words)) + "\n")
        if private_words
        else system
        for c in range(conversations)
    ]
    figures: list[RoundFigures] = []
    limits = httpx.Limits(max_connections=conversations + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:
        for turn in range(1, turns + 1):
            prompts = []
            for c in range(conversations):
                question = " ".join(rng.choice(WORDS) for _ in range(24))
                prompts.append(f"{history[c]}User {c}: {question}\nAssistant:")

            async def send(c: int, prompt: str) -> Sample:
                await asyncio.sleep(c / conversations)  # staggered over a second
                return await one_request(http, url, model, prompt, max_tokens)

            before = counters(url, workers)
            results = await asyncio.gather(*(send(c, p) for c, p in enumerate(prompts)))
            figures.append(round_figures(turn, list(results), before, counters(url, workers)))
            history = [p + r.text + "\n" for p, r in zip(prompts, results, strict=True)]
    return figures


def run(a) -> int:  # type: ignore[no-untyped-def]  # argparse.Namespace of bench serve
    """Run every setup in turn; print one JSON report (or a table)."""
    setups = [s for s in (a.setups.split(",") if a.setups else SETUPS) if s]
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        print(f"baton bench serve: --setups: unknown {unknown}; choose from {list(SETUPS)}", file=sys.stderr)
        return 2
    report: dict = {
        "bench": "serve",
        "workload": {
            "kind": "multiturn",
            "conversations": a.conversations,
            "turns": a.turns,
            "system_words": a.system_words,
            "private_words": a.private_words,
            "max_tokens": a.max_tokens,
            "deployment": "1 prefill + 2 decode workers, every prompt prefilled remotely",
        },
        "model": a.model,
        "device": a.device,
        "results": {},
    }
    failed = False
    for name in setups:
        stack = _Stack(a.model, a.device, SETUPS[name], a.kv_blocks, a.worker_arg, a.ready_timeout, a.verbose)
        try:
            rounds = asyncio.run(
                converse(
                    stack.url,
                    stack.worker_metrics,
                    a.model,
                    a.conversations,
                    a.turns,
                    a.system_words,
                    a.private_words,
                    a.max_tokens,
                    a.seed,
                )
            )
        finally:
            stack.stop()
        later = [r for r in rounds if r.turn > 1]
        report["results"][name] = {
            "rounds": [asdict(r) for r in rounds],
            "later_turns": {
                "ttft_p50_ms": round(sum(r.ttft_p50_ms for r in later) / max(1, len(later)), 1),
                "ttft_p90_ms": round(sum(r.ttft_p90_ms for r in later) / max(1, len(later)), 1),
                "kv_bytes_per_request": round(
                    sum(r.kv_bytes_per_request for r in later) / max(1, len(later)), 1
                ),
                "decode_cached_fraction": round(
                    sum(r.decode_cached_fraction for r in later) / max(1, len(later)), 3
                ),
                "decode_vs_oracle": round(sum(r.decode_vs_oracle for r in later) / max(1, len(later)), 3),
            },
        }
        failed |= any(r.ok < r.requests for r in rounds)
        if not a.json:
            for r in rounds:
                print(
                    f"{name:>16} turn {r.turn}: {r.ok}/{r.requests} ok, prompt {r.prompt_tokens_mean:.0f} tok | "
                    f"TTFT p50 {r.ttft_p50_ms:.0f} ms p90 {r.ttft_p90_ms:.0f} ms | "
                    f"KV {r.kv_bytes_per_request / 1e6:.2f} MB/req | hits: prefill "
                    f"{r.prefill_hit_rate:.0%} decode {r.decode_hit_rate:.0%} "
                    f"(router: {r.decode_vs_oracle:.0%} of oracle)",
                    flush=True,
                )
    results = report["results"]
    if "cache+kv-aware" in results and "no-cache" in results:
        on, off = results["cache+kv-aware"]["later_turns"], results["no-cache"]["later_turns"]
        report["ttft_p50_speedup_later_turns"] = round(off["ttft_p50_ms"] / max(on["ttft_p50_ms"], 1e-9), 2)
    if a.json:
        print(json.dumps(report, indent=2))
    return 1 if failed else 0
