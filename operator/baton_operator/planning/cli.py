"""`baton plan`: the cheapest pool that meets TTFT and ITL SLOs at a rate, from a measured profile.

Imports nothing beyond the operator's base install (no torch): it runs wherever the operator does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from baton_operator.planning.plan import Options, Slo, plan
from baton_operator.planning.profile import ProfileError, load_profile
from baton_operator.planning.report import explain, to_json
from baton_operator.planning.workload import LengthDist, Workload


def _length(text: str) -> LengthDist:
    try:
        return LengthDist.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="baton plan",
        description="Predict TTFT, ITL and goodput of disaggregated and colocated pools from a performance "
        "profile (baton-profile/v1) by discrete-event simulation, and pick the cheapest that meets both SLOs "
        "for --attainment of requests. Lengths: N (fixed), A-B (uniform) or lognormal:MEAN[:SIGMA].",
    )
    p.add_argument(
        "--profile", required=True, help="baton-profile/v1 JSON file (e.g. profiles/h100-llama3-8b.json)"
    )
    p.add_argument("--rate", required=True, type=_positive(float), help="arrival rate, requests per second")
    p.add_argument("--isl", required=True, type=_length, help="prompt (input) length in tokens")
    p.add_argument("--osl", required=True, type=_length, help="output length in tokens")
    p.add_argument("--ttft-ms", required=True, type=_positive(float), help="time-to-first-token SLO")
    p.add_argument(
        "--itl-ms",
        required=True,
        type=_positive(float),
        help="SLO on each request's mean time per output token after the first",
    )
    p.add_argument("--gpus", type=_positive(int), help="GPU budget (a cpu profile: workers)")
    p.add_argument(
        "--burstiness",
        type=_positive(float),
        default=1.0,
        help="gamma shape of inter-arrival gaps: 1 = Poisson (default), < 1 burstier",
    )
    p.add_argument(
        "--attainment", type=float, default=0.9, help="fraction of requests that must meet both SLOs"
    )
    p.add_argument("--requests", type=_positive(int), default=2000, help="simulated requests per run")
    p.add_argument(
        "--prefix-cached",
        type=float,
        default=0.0,
        help="fraction of each prompt's tokens already cached (not prefilled)",
    )
    p.add_argument(
        "--max-replicas", type=_positive(int), default=8, help="most replicas per role (colocated: 2x)"
    )
    p.add_argument("--prefill-max-batch", type=_positive(int), default=1)
    p.add_argument("--decode-max-batch", type=_positive(int), default=64)
    p.add_argument(
        "--kv-backend", default="auto", help="KV backend of the profile's kv_transfer (auto: nixl)"
    )
    p.add_argument(
        "--compare-gpus",
        type=_positive(int),
        help="GPU count of the disaggregated vs colocated comparison (default: the chosen's)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `baton plan` (0: a deployment was found; 1: none meets the SLOs; 2: bad input)."""
    a = parser().parse_args(argv)
    try:
        profile = load_profile(a.profile)
        workload = Workload(
            rate=a.rate,
            isl=a.isl,
            osl=a.osl,
            num_requests=a.requests,
            burstiness=a.burstiness,
            prefix_cached=a.prefix_cached,
            seed=a.seed,
        )
        slo = Slo(a.ttft_ms / 1000, a.itl_ms / 1000, a.attainment)
        opts = Options(
            a.max_replicas, a.gpus, a.prefill_max_batch, a.decode_max_batch, a.kv_backend, a.compare_gpus
        )
        if profile.kv_backends:
            profile.kv_fit(opts.kv_backend)  # an unknown backend fails here, before the search
        started = time.perf_counter()
        result = plan(profile, workload, slo, opts)
        elapsed = time.perf_counter() - started
    except (ProfileError, ValueError) as e:
        print(f"baton plan: {e}", file=sys.stderr)
        return 2
    if a.json:
        doc = to_json(result, a.profile)
        doc["search_seconds"] = round(elapsed, 2)
        print(json.dumps(doc, indent=2))
    else:
        print(explain(result, a.profile))
    return 0 if result.feasible else 1


if __name__ == "__main__":
    sys.exit(main())
