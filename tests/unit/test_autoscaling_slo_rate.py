"""SLO mode's rate estimate: windows from successive counter samples, resets, buckets, parsing."""

from __future__ import annotations

import json

import pytest
from baton_operator.autoscaling.signal import SignalError
from baton_operator.autoscaling.slo_rate import (
    Counters,
    CounterSample,
    Window,
    bucket_up,
    estimate,
    planned_inputs,
    window,
)
from baton_operator.autoscaling.slo_signal import parse_counter_vector, parse_counters
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


def c(requests: float, isl: float = 1000, osl: float = 200, started: float | None = 1.0) -> Counters:
    """A router that received ``requests`` requests, all finished, with these mean lengths."""
    return Counters(requests, requests, requests * isl, requests * osl, started)


def sample(t: float, **routers: Counters) -> CounterSample:
    return CounterSample(t, routers)


A0, A10 = sample(0, a=c(0)), sample(10, a=c(50))


@pytest.mark.parametrize(
    ("prev", "cur", "expected", "why"),
    [
        (None, A0, None, "first sample"),
        (A0, A10, Window(10, 10, 50, 50, 50_000, 10_000), ""),
        # Two routers: deltas add up.
        (
            sample(0, a=c(10), b=c(5)),
            sample(5, a=c(20), b=c(25)),
            Window(5, 5, 30, 30, 30_000, 6000),
            "",
        ),
        # A counter went back: the router restarted (its counts in the window are unknown).
        (sample(0, a=c(100)), sample(5, a=c(3)), None, "went back"),
        # A restart that already counted past the old value: caught by the start time.
        (sample(0, a=c(3, started=1.0)), sample(5, a=c(40, started=4.0)), None, "restarted"),
        # A router appeared (scale-out) or went: its share of the window is unknown.
        (sample(0, a=c(10)), sample(5, a=c(20), b=c(2)), None, "started or went"),
        (sample(0, a=c(10), b=c(2)), sample(5, a=c(20)), None, "started or went"),
        # Too long between samples (an outage), or time going backwards.
        (sample(0, a=c(0)), sample(500, a=c(10)), None, "between samples"),
        (sample(5, a=c(0)), sample(5, a=c(10)), None, "between samples"),
        # A Service URL in front of several routers: never a window.
        (
            CounterSample(0, {"s": c(0)}, identified=False),
            CounterSample(5, {"s": c(9)}, False),
            None,
            "Service",
        ),
    ],
)
def test_window_from_successive_samples(prev, cur, expected, why) -> None:
    got, reason = window(prev, cur, max_seconds=60)
    assert got == expected
    assert why in reason


def test_estimate_averages_the_windows_of_the_rate_window() -> None:
    # 10 req/s for 30 s, then 20 req/s for 30 s, in 5 s windows; ISL 1000 then 2000.
    windows = [Window(t, 5, 50, 50, 50_000, 10_000) for t in range(5, 35, 5)]
    windows += [Window(t, 5, 100, 100, 200_000, 20_000) for t in range(35, 65, 5)]
    est = estimate(windows, now=60, window_s=60)
    assert est is not None and est.windows == 12 and est.seconds == 60
    assert est.rate_rps == pytest.approx(15)
    assert est.input_tokens == pytest.approx((300_000 + 1_200_000) / 900)  # per finished request
    assert est.output_tokens == pytest.approx(200)
    recent = estimate(windows, now=60, window_s=30)
    assert recent is not None and recent.rate_rps == pytest.approx(20) and recent.input_tokens == 2000
    assert estimate(windows, now=200, window_s=60) is None  # nothing recent
    assert estimate([], now=0, window_s=60) is None


def test_estimate_without_finished_requests_has_a_rate_but_no_lengths() -> None:
    est = estimate([Window(5, 5, 10, 0, 0, 0)], now=5, window_s=60)
    assert est is not None and est.rate_rps == 2 and est.input_tokens is None and est.output_tokens is None
    idle = estimate([Window(5, 5, 0, 0, 0, 0)], now=5, window_s=60)
    assert idle is not None and idle.rate_rps == 0


def test_a_trace_with_a_restart_skips_only_the_reset_window() -> None:
    # One router at 4 req/s, sampled every 5 s; it restarts between t=20 and t=25.
    counts = {0: 0, 5: 20, 10: 40, 15: 60, 20: 80, 25: 12, 30: 32, 35: 52}
    started = {t: (1.0 if t <= 20 else 22.0) for t in counts}
    samples = [sample(t, a=c(n, started=started[t])) for t, n in counts.items()]
    windows = []
    for prev, cur in zip([None, *samples], samples, strict=False):
        w, _ = window(prev, cur, max_seconds=60)
        if w is not None:
            windows.append(w)
    assert [w.end for w in windows] == [5, 10, 15, 20, 30, 35]  # 25 (the reset) left out
    est = estimate(windows, now=35, window_s=60)
    assert est is not None and est.rate_rps == pytest.approx(4)  # not 4 minus a dip, nor a spike


@pytest.mark.parametrize(
    ("value", "step", "expected"),
    [
        (0, 1.1, 0.0),
        (1.0, 1.1, 1.0),
        (1.1, 1.1, 1.1),
        (20, 1.1, 1.1**32),
        (19.0, 1.1, 1.1**31),
        (0.5, 2, 0.5),
    ],
)
def test_bucket_up_rounds_up_to_a_power_of_the_step(value, step, expected) -> None:
    assert bucket_up(value, step) == pytest.approx(expected)
    assert bucket_up(value, step) >= value - 1e-9


def test_planned_inputs_differ_only_across_buckets() -> None:
    assert planned_inputs(20.0, 1000, 200) == planned_inputs(20.9, 1020, 205)
    rate, isl, osl = planned_inputs(20.0, 1000, 200)
    assert rate >= 20 and isl >= 1000 and osl >= 200
    assert rate < 20 * 1.1 and isl < 1000 * 1.1 and osl < 200 * 1.1
    assert planned_inputs(22.0, 1000, 200)[0] > rate


def _router_page(requests: int, prompt: int, generation: int) -> str:
    """A router's /metrics as the router's own prometheus_client registry writes it."""
    r = CollectorRegistry()
    reqs = Counter("baton_requests", "Requests received", ["api", "stream"], registry=r)
    Counter("baton_prompt_tokens", "Prompt tokens", registry=r).inc(prompt)
    Counter("baton_generation_tokens", "Output tokens", registry=r).inc(generation)
    e2e = Histogram("baton_e2e_request_latency_seconds", "e2e", registry=r)
    for i in range(requests):
        reqs.labels("chat" if i % 2 else "completions", "true").inc()
        e2e.observe(0.5)
    return generate_latest(r).decode()


def test_parse_counters_of_a_router_page_sums_the_request_labels() -> None:
    (got,) = parse_counters(_router_page(7, 700, 140), prefix="http://10.0.0.5:8000/metrics|").items()
    key, counters = got
    assert key == "http://10.0.0.5:8000/metrics|"
    assert (counters.requests, counters.finished, counters.prompt_tokens, counters.generation_tokens) == (
        7,
        7,
        700,
        140,
    )
    assert counters.started is not None and counters.started > 1e9  # the router's start time


def test_parse_counters_tells_routers_apart_by_their_labels_and_skips_pages_without_them() -> None:
    page = (
        "# TYPE baton_requests_total counter\n"
        'baton_requests_total{pod="r-1",api="chat",stream="true"} 3\n'
        'baton_requests_total{pod="r-1",api="completions",stream="false"} 2\n'
        'baton_requests_total{pod="r-2",api="chat",stream="true"} 4\n'
        "# TYPE baton_prompt_tokens_total counter\n"
        'baton_prompt_tokens_total{pod="r-1"} 500\n'
        'baton_prompt_tokens_total{pod="r-2"} 400\n'
        "# TYPE baton_queue_depth gauge\n"
        'baton_queue_depth{pod="r-1",role="decode"} 3\n'
    )
    got = parse_counters(page)
    assert got == {
        "pod=r-1": Counters(5, 0, 500, 0),
        "pod=r-2": Counters(4, 0, 400, 0),
    }
    assert parse_counters('baton_queue_depth{role="decode"} 3\n') == {}  # an older router
    with pytest.raises(SignalError, match="unparsable"):
        parse_counters("baton_requests_total{ 3\n")


def test_parse_counter_vector_from_prometheus() -> None:
    def series(name: str, pod: str, value: float, **labels: str) -> dict:
        return {
            "metric": {"__name__": name, "namespace": "ml", "pod": pod, **labels},
            "value": [0, str(value)],
        }

    body = json.dumps(
        {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [
                    series("baton_requests_total", "r-1", 3, api="chat", stream="true"),
                    series("baton_requests_total", "r-1", 2, api="completions", stream="false"),
                    series("baton_e2e_request_latency_seconds_count", "r-1", 4),
                    series("baton_generation_tokens_total", "r-1", 80),
                    series("baton_prompt_tokens_created", "r-1", 1700000000),
                ],
            },
        }
    ).encode()
    assert parse_counter_vector(body) == {"namespace=ml,pod=r-1": Counters(5, 4, 0, 80, 1700000000)}
    with pytest.raises(SignalError, match="failed"):
        parse_counter_vector(b'{"status": "error", "error": "bad query"}')
