"""`baton bench plan`: the planner's simulator against the real stack, at several load levels.

One `baton up` (1 prefill + 1 decode worker, every prompt prefilled remotely) serves, at each
``--rates`` level, ``--requests`` Poisson (or gamma, ``--burstiness``) arrivals of ~``--prompt-words``
prompts streaming ``--max-tokens`` tokens each. The simulator then replays exactly those requests
(the same arrival times, the prompt lengths the router counted, the same output lengths) on the
same deployment with the costs of ``--profile`` (written by `baton profile` on this machine), and
the report puts predicted and measured TTFT p90 and ITL p50 (per request, time per output token
after the first) side by side with their relative errors. Every point is reported, misses
included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from baton_dev.bench.serve import MODES, Sample, _Stack, arrival_times, drive, make_prompts

TOLERANCE = 0.20  # the planner's accuracy target on TTFT p90 and ITL p50


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baton bench plan", description=__doc__)
    p.add_argument("--profile", required=True, help="a baton-profile/v1 file measured on this machine")
    p.add_argument("--model", default="builtin://tiny")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--rates", default="1,3,6", help="arrival rates to measure, req/s")
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape (1 = Poisson)")
    p.add_argument("--prompt-words", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--kv-blocks", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--verbose", action="store_true")
    return p


def _pct(values: list[float], q: float) -> float:
    from baton_operator.planning.stats import percentile

    return percentile(values, q)


def compare(profile: Any, samples: list[Sample], offsets: list[float], max_tokens: int) -> dict[str, Any]:
    """Predicted against measured for one load level (pure given the samples)."""
    from baton_operator.planning.simulate import Deployment, simulate
    from baton_operator.planning.workload import Requests

    ok = [(s, o) for s, o in zip(samples, offsets, strict=True) if s.ok]
    reqs = Requests(
        arrival=[o for _, o in ok],
        prompt_tokens=[s.prompt_tokens for s, _ in ok],
        prefill_tokens=[s.prompt_tokens for s, _ in ok],  # distinct prompts: nothing cached
        output_tokens=[s.tokens for s, _ in ok],
    )
    sim = simulate(profile, reqs, Deployment(1, 1, prefill_max_batch=1, decode_max_batch=64))
    measured = {
        "ttft_p90_ms": _pct([s.ttft_s for s, _ in ok], 90) * 1000,
        "itl_p50_ms": _pct([s.tpot_s for s, _ in ok], 50) * 1000,
    }
    predicted = {"ttft_p90_ms": _pct(sim.ttft, 90) * 1000, "itl_p50_ms": _pct(sim.itl, 50) * 1000}
    errors = {
        k: (predicted[k] - measured[k]) / measured[k] if measured[k] else float("inf") for k in measured
    }
    return {
        "completed": len(ok),
        "requests": len(samples),
        "measured": {k: round(v, 2) for k, v in measured.items()},
        "predicted": {k: round(v, 2) for k, v in predicted.items()},
        "relative_error": {k: round(v, 3) for k, v in errors.items()},
        "within_20pct": {k: abs(v) <= TOLERANCE for k, v in errors.items()},
    }


def main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    from baton_operator.planning.profile import load_profile

    try:
        rates = [float(r) for r in a.rates.split(",") if r]
        profile = load_profile(a.profile)
    except (ValueError, OSError) as e:
        print(f"baton bench plan: {e}", file=sys.stderr)
        return 2
    stack = _Stack(a.model, a.device, MODES["disaggregated"], a.kv_blocks, [], a.ready_timeout, a.verbose)
    points = []
    try:
        warm = make_prompts(4, a.prompt_words, a.seed + 1)
        asyncio.run(drive(stack.url, a.model, warm, [0.0] * len(warm), a.max_tokens))
        for i, rate in enumerate(rates):
            prompts = make_prompts(a.requests, a.prompt_words, a.seed + 10 + i)
            offsets = arrival_times(a.requests, rate, a.burstiness, a.seed + i)
            samples, _ = asyncio.run(drive(stack.url, a.model, prompts, offsets, a.max_tokens))
            point = {"rate_rps": rate, **compare(profile, samples, offsets, a.max_tokens)}
            points.append(point)
            if not a.json:
                m, p, e = point["measured"], point["predicted"], point["relative_error"]
                print(
                    f"{rate:>5g} req/s: TTFT p90 measured {m['ttft_p90_ms']:.0f} ms, predicted "
                    f"{p['ttft_p90_ms']:.0f} ms ({e['ttft_p90_ms']:+.0%}) | ITL p50 measured "
                    f"{m['itl_p50_ms']:.1f} ms, predicted {p['itl_p50_ms']:.1f} ms ({e['itl_p50_ms']:+.0%})",
                    flush=True,
                )
    finally:
        stack.stop()
    report = {
        "bench": "plan",
        "profile": a.profile,
        "profile_measured_by": profile.measured_by,
        "deployment": "1 prefill + 1 decode worker (baton up), every prompt prefilled remotely",
        "workload": {
            "requests_per_level": a.requests,
            "arrivals": f"gamma(shape={a.burstiness})" + (" = Poisson" if a.burstiness == 1 else ""),
            "prompt_words": a.prompt_words,
            "max_tokens": a.max_tokens,
        },
        "points": points,
        "within_20pct": sum(all(p["within_20pct"].values()) for p in points),
    }
    if a.json:
        print(json.dumps(report, indent=2))
    return 0
