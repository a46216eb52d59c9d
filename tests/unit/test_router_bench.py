"""Pure parts of `baton bench serve`: arrivals, percentiles, goodput."""

from __future__ import annotations

import pytest
from baton_dev.bench.serve import Sample, arrival_times, percentile, summarize


@pytest.mark.parametrize(
    ("values", "q", "want"),
    [
        ([], 50, 0.0),
        ([3.0], 99, 3.0),
        ([1, 2, 3, 4], 50, 2),
        ([1, 2, 3, 4], 100, 4),
        (list(range(1, 101)), 99, 99),
    ],
)
def test_percentile(values, q, want) -> None:
    assert percentile(values, q) == want


@pytest.mark.parametrize("shape", [0.25, 1.0, 4.0])
def test_arrivals_have_the_requested_mean_rate(shape: float) -> None:
    t = arrival_times(4000, rate=5.0, shape=shape, seed=1)
    assert t[0] == 0 and t == sorted(t)
    assert 4000 / t[-1] == pytest.approx(5.0, rel=0.1)
    assert arrival_times(10, 5.0, shape, 7) == arrival_times(10, 5.0, shape, 7)


def test_burstier_arrivals_vary_more() -> None:
    def cv(ts: list[float]) -> float:
        gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
        m = sum(gaps) / len(gaps)
        return (sum((g - m) ** 2 for g in gaps) / len(gaps)) ** 0.5 / m

    assert cv(arrival_times(3000, 5.0, 0.25, 3)) > 1.5 > cv(arrival_times(3000, 5.0, 1.0, 3)) > 0.8


def test_summarize_goodput_needs_both_targets() -> None:
    samples = [
        Sample(True, ttft_s=0.5, e2e_s=0.5 + 9 * 0.05, tokens=10, itls_s=(0.05,) * 9),  # meets both
        Sample(True, ttft_s=2.0, e2e_s=2.0 + 9 * 0.05, tokens=10, itls_s=(0.05,) * 9),  # TTFT too slow
        Sample(True, ttft_s=0.5, e2e_s=0.5 + 9 * 0.5, tokens=10, itls_s=(0.5,) * 9),  # TPOT too slow
        Sample(False, 0, 0, 0, (), "HTTP 503"),
    ]
    s = summarize("x", samples, duration_s=2.0, ttft_slo=1.0, tpot_slo=0.1)
    assert (s.requests, s.completed, s.goodput_rps, s.slo_attainment) == (4, 3, 0.5, 0.25)
    assert s.ttft_p50_ms == 500.0 and s.itl_p99_ms == 500.0 and s.errors == ["HTTP 503"]
