"""`baton bench serve`: TTFT, inter-token latency and goodput of the OpenAI endpoint under bursty
arrivals, for 1 prefill + 1 decode worker (disaggregated) against 2 workers that each prefill and
decode (colocated), side by side in one run.

Arrivals follow a gamma process (shape 1 = Poisson; below 1 = burstier). Every request streams
a fixed number of output tokens (``ignore_eos``), so the two setups do the same work. Goodput is
the rate of requests that met both targets: TTFT <= --ttft-slo and TPOT (time per output token
after the first) <= --tpot-slo.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

import httpx

MODES = {
    # Every prompt prefills remotely: this is the disaggregated data path being measured.
    "disaggregated": ["--prefill", "1", "--decode", "1", "--local-prefill-max-tokens", "0"],
    "colocated": ["--colocated", "2"],
}


@dataclass(frozen=True)
class Sample:
    ok: bool
    ttft_s: float
    e2e_s: float
    tokens: int
    itls_s: tuple[float, ...]
    error: str = ""
    text: str = ""  # the streamed completion
    prompt_tokens: int = 0

    @property
    def tpot_s(self) -> float:
        return (self.e2e_s - self.ttft_s) / max(1, self.tokens - 1)


@dataclass(frozen=True)
class Summary:
    mode: str
    requests: int
    completed: int
    duration_s: float
    throughput_rps: float
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    tpot_p50_ms: float
    tpot_p99_ms: float
    slo_attainment: float
    goodput_rps: float
    errors: list[str]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def arrival_times(n: int, rate: float, shape: float, seed: int) -> list[float]:
    """Start offsets (s) of ``n`` requests: gamma inter-arrivals with mean 1/rate."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.gammavariate(shape, 1.0 / (rate * shape))
    return out


def summarize(
    mode: str, samples: list[Sample], duration_s: float, ttft_slo: float, tpot_slo: float
) -> Summary:
    """Aggregate samples into the reported figures (pure)."""
    ok = [s for s in samples if s.ok]
    good = [s for s in ok if s.ttft_s <= ttft_slo and s.tpot_s <= tpot_slo]
    itls = [x for s in ok for x in s.itls_s]
    ms = 1000.0
    return Summary(
        mode=mode,
        requests=len(samples),
        completed=len(ok),
        duration_s=round(duration_s, 3),
        throughput_rps=round(len(ok) / duration_s, 3) if duration_s else 0.0,
        output_tokens_per_s=round(sum(s.tokens for s in ok) / duration_s, 1) if duration_s else 0.0,
        ttft_p50_ms=round(percentile([s.ttft_s for s in ok], 50) * ms, 2),
        ttft_p99_ms=round(percentile([s.ttft_s for s in ok], 99) * ms, 2),
        itl_p50_ms=round(percentile(itls, 50) * ms, 2),
        itl_p99_ms=round(percentile(itls, 99) * ms, 2),
        tpot_p50_ms=round(percentile([s.tpot_s for s in ok], 50) * ms, 2),
        tpot_p99_ms=round(percentile([s.tpot_s for s in ok], 99) * ms, 2),
        slo_attainment=round(len(good) / len(samples), 3) if samples else 0.0,
        goodput_rps=round(len(good) / duration_s, 3) if duration_s else 0.0,
        errors=sorted({s.error for s in samples if s.error})[:5],
    )


async def one_request(http: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> Sample:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = last = 0.0
    itls: list[float] = []
    text: list[str] = []
    tokens = prompt_tokens = 0
    try:
        async with http.stream("POST", url + "/completions", json=body) as r:
            if r.status_code != 200:
                return Sample(False, 0, 0, 0, (), f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if "error" in obj:
                    return Sample(False, 0, 0, 0, (), obj["error"]["message"][:200])
                now = time.perf_counter()
                if obj.get("choices") and obj["choices"][0].get("text"):
                    if not first:
                        first = now
                    else:
                        itls.append(now - last)
                    last = now
                    text.append(obj["choices"][0]["text"])
                if obj.get("usage"):
                    tokens = obj["usage"]["completion_tokens"]
                    prompt_tokens = obj["usage"]["prompt_tokens"]
    except httpx.HTTPError as e:
        return Sample(False, 0, 0, 0, (), f"{type(e).__name__}: {e}")
    end = time.perf_counter()
    return Sample(
        tokens > 0, (first or end) - t0, end - t0, tokens, tuple(itls), "", "".join(text), prompt_tokens
    )


async def drive(
    url: str, model: str, prompts: list[str], offsets: list[float], max_tokens: int
) -> tuple[list[Sample], float]:
    """Send each prompt at its offset; return the samples and the wall time of the run."""
    limits = httpx.Limits(max_connections=len(prompts) + 8, max_keepalive_connections=len(prompts) + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:
        start = time.perf_counter()

        async def at(offset: float, prompt: str) -> Sample:
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            return await one_request(http, url, model, prompt, max_tokens)

        samples = await asyncio.gather(*(at(o, p) for o, p in zip(offsets, prompts, strict=True)))
        return list(samples), time.perf_counter() - start


def make_prompts(n: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = "prefill decode router cache block token stream batch handle worker pool queue".split()
    return [f"{i}: " + " ".join(rng.choice(vocab) for _ in range(words)) for i in range(n)]


class _Stack:
    """A `baton up` subprocess for one mode."""

    def __init__(
        self,
        model: str,
        device: str,
        args: list[str],
        kv_blocks: int,
        worker_args: list[str],
        timeout_s: float,
        log: bool,
    ) -> None:
        cmd = [sys.executable, "-m", "baton_worker.cli", "up", "--model", model, "--device", device]
        # Enough KV blocks that the burst fits on either side: the comparison is about where
        # prefill runs, not about which setup runs out of cache first.
        cmd += ["--port", "0", f"--worker-arg=--kv-blocks={kv_blocks}"]
        cmd += [f"--worker-arg={w}" for w in worker_args]
        self.proc = subprocess.Popen(
            cmd + args + ["--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.url = ""
        self.worker_metrics: dict[str, str] = {}  # prefill-0 / decode-1 -> its /metrics address
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if log:
                    print(f"  [{args[0]}] {line.rstrip()}", file=sys.stderr)
                w = re.search(r"^baton up: ((?:prefill|decode)-\d+) .* metrics=(\S+)", line)
                if w:
                    self.worker_metrics[w.group(1)] = w.group(2)
                m = re.search(r"^baton up ready.* url=(\S+)", line)
                if m:
                    self.url = m.group(1)
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout_s) or not self.url:
            self.stop()
            raise RuntimeError(f"baton up {' '.join(args)} was not ready within {timeout_s}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baton bench serve", description=__doc__)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--model", default="builtin://tiny")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--rate", type=float, default=4.0, help="mean arrivals per second")
    p.add_argument("--burstiness", type=float, default=0.5, help="gamma shape (1 = Poisson, < 1 burstier)")
    p.add_argument("--prompt-words", type=int, default=200, help="words per prompt (about 1-2 tokens each)")
    p.add_argument("--kv-blocks", type=int, default=4096, help="KV blocks of every worker (16 tokens each)")
    p.add_argument("--worker-arg", action="append", default=[], help="extra worker argument (repeatable)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--ttft-slo", type=float, default=1.0, help="seconds")
    p.add_argument("--tpot-slo", type=float, default=0.1, help="seconds per output token")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default=",".join(MODES), help="comma list of " + ", ".join(MODES))
    p.add_argument("--url", default="", help="measure this running endpoint instead of starting stacks")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--verbose", action="store_true")
    w = p.add_argument_group("workload")
    w.add_argument(
        "--workload",
        default="random",
        choices=["random", "multiturn"],
        help="random: independent prompts, disaggregated vs colocated; multiturn: conversations with "
        "a shared system prompt, prefix caching and KV-aware routing on vs off",
    )
    w.add_argument("--conversations", type=int, default=8, help="multiturn: conversations at once")
    w.add_argument("--turns", type=int, default=4, help="multiturn: turns per conversation")
    w.add_argument(
        "--system-words", type=int, default=700, help="multiturn: words of the shared system prompt"
    )
    w.add_argument(
        "--private-words", type=int, default=0, help="multiturn: words of each conversation's own document"
    )
    w.add_argument("--setups", default="", help="multiturn: comma list (default: all)")
    return p


def main(argv: list[str]) -> int:
    """Run the benchmark; 0 when every mode ran, 1 otherwise."""
    a = build_parser().parse_args(argv)
    if a.workload == "multiturn":
        from baton_dev.bench.multiturn import run

        return run(a)
    if a.requests < 1 or a.rate <= 0 or a.burstiness <= 0 or a.max_tokens < 2:
        print(
            "baton bench serve: --requests >= 1, --rate > 0, --burstiness > 0, --max-tokens >= 2",
            file=sys.stderr,
        )
        return 2
    modes = [m for m in a.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"baton bench serve: --modes: unknown {unknown}; choose from {list(MODES)}", file=sys.stderr)
        return 2
    prompts = make_prompts(a.requests, a.prompt_words, a.seed)
    offsets = arrival_times(a.requests, a.rate, a.burstiness, a.seed)
    warm = make_prompts(4, a.prompt_words, a.seed + 1)
    results: list[Summary] = []
    for mode in [a.url] if a.url else modes:
        stack = (
            None
            if a.url
            else _Stack(a.model, a.device, MODES[mode], a.kv_blocks, a.worker_arg, a.ready_timeout, a.verbose)
        )
        url = a.url or stack.url  # type: ignore[union-attr]
        try:
            asyncio.run(drive(url, a.model, warm, [0.0] * len(warm), a.max_tokens))  # warm-up, not measured
            samples, duration = asyncio.run(drive(url, a.model, prompts, offsets, a.max_tokens))
        finally:
            if stack is not None:
                stack.stop()
        results.append(
            summarize(mode if not a.url else "endpoint", samples, duration, a.ttft_slo, a.tpot_slo)
        )
        if not a.json:
            s = results[-1]
            print(
                f"{s.mode:>14}: {s.completed}/{s.requests} ok in {s.duration_s:.1f}s | TTFT p50 {s.ttft_p50_ms:.0f} ms "
                f"p99 {s.ttft_p99_ms:.0f} ms | ITL p50 {s.itl_p50_ms:.1f} ms p99 {s.itl_p99_ms:.1f} ms | "
                f"TPOT p50 {s.tpot_p50_ms:.1f} ms | goodput {s.goodput_rps:.2f} req/s ({s.slo_attainment:.0%} in SLO)",
                flush=True,
            )
    report = {
        "bench": "serve",
        "model": a.model,
        "device": a.device,
        "workload": {
            "requests": a.requests,
            "rate_rps": a.rate,
            "arrivals": f"gamma(shape={a.burstiness})" + (" = Poisson" if a.burstiness == 1 else ""),
            "prompt_words": a.prompt_words,
            "max_tokens": a.max_tokens,
            "ttft_slo_s": a.ttft_slo,
            "tpot_slo_s": a.tpot_slo,
        },
        "results": [asdict(r) for r in results],
    }
    if a.json:
        print(json.dumps(report, indent=2))
    return 0 if all(r.completed == r.requests for r in results) else 1
