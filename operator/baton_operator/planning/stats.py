"""What a simulation predicts: per-request latencies, percentiles, SLO attainment and goodput."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from baton_operator.planning.workload import Requests


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated between ranks."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class SimResult:
    """Per-request predictions of one simulated run (seconds).

    ``itl`` is each request's mean time per output token after the first,
    ``(last token - first token) / (output tokens - 1)`` (0 for a one-token output): what an ITL
    SLO is checked against, as in DistServe's TPOT.
    """

    deployment: str
    ttft: list[float]
    itl: list[float]
    e2e: list[float]
    span_s: float  # first arrival to last token

    @classmethod
    def of(cls, reqs: Requests, first: list[float], last: list[float], deployment: str) -> SimResult:
        ttft = [f - a for f, a in zip(first, reqs.arrival, strict=True)]
        itl = [
            (lt - f) / (o - 1) if o > 1 else 0.0
            for f, lt, o in zip(first, last, reqs.output_tokens, strict=True)
        ]
        e2e = [lt - a for lt, a in zip(last, reqs.arrival, strict=True)]
        span = (max(last) - min(reqs.arrival)) if reqs.arrival else 0.0
        return cls(deployment, ttft, itl, e2e, span)

    def __len__(self) -> int:
        return len(self.ttft)

    def ok(self, ttft_s: float, itl_s: float) -> list[bool]:
        """Whether each request met both SLOs."""
        return [t <= ttft_s and i <= itl_s for t, i in zip(self.ttft, self.itl, strict=True)]

    def attainment(self, ttft_s: float, itl_s: float) -> float:
        """Fraction of requests that met both SLOs."""
        return sum(self.ok(ttft_s, itl_s)) / len(self) if len(self) else 0.0

    def misses(self, ttft_s: float, itl_s: float) -> tuple[float, float]:
        """Fractions of requests over the TTFT SLO and over the ITL SLO (a request may miss both)."""
        n = max(1, len(self))
        return sum(t > ttft_s for t in self.ttft) / n, sum(i > itl_s for i in self.itl) / n

    def goodput(self, ttft_s: float, itl_s: float) -> float:
        """Requests per second that met both SLOs, over the run's span."""
        return sum(self.ok(ttft_s, itl_s)) / self.span_s if self.span_s > 0 else 0.0

    def throughput(self) -> float:
        return len(self) / self.span_s if self.span_s > 0 else 0.0

    def summary(self, ttft_s: float | None = None, itl_s: float | None = None) -> dict[str, Any]:
        """Percentiles in ms (and, given SLOs, attainment and goodput) as JSON-ready numbers."""
        out: dict[str, Any] = {"deployment": self.deployment, "requests": len(self)}
        for name, values in (("ttft_ms", self.ttft), ("itl_ms", self.itl), ("e2e_ms", self.e2e)):
            out[name] = {f"p{q}": round(percentile(values, q) * 1000, 2) for q in (50, 90, 99)}
        out["throughput_rps"] = round(self.throughput(), 3)
        if ttft_s is not None and itl_s is not None:
            miss_ttft, miss_itl = self.misses(ttft_s, itl_s)
            out["attainment"] = round(self.attainment(ttft_s, itl_s), 4)
            out["goodput_rps"] = round(self.goodput(ttft_s, itl_s), 3)
            out["over_ttft_slo"] = round(miss_ttft, 4)
            out["over_itl_slo"] = round(miss_itl, 4)
        return out
