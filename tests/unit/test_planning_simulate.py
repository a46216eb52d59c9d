"""The serving simulator: deterministic, exact when idle, and showing what queueing and colocation cost."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from baton_operator.planning.profile import load_profile
from baton_operator.planning.simulate import Deployment, simulate
from baton_operator.planning.stats import percentile
from baton_operator.planning.workload import LengthDist, Requests, Workload

H100 = load_profile(Path(__file__).resolve().parents[2] / "profiles" / "h100-llama3-8b.json")
CHAT = Workload(rate=6, isl=LengthDist.lognormal(1000, 0.5), osl=LengthDist.fixed(200), num_requests=400)
DISAGG = Deployment(1, 1)
COLOC = Deployment.colocated(2)


@pytest.mark.parametrize("dep", [DISAGG, Deployment(2, 3, prefill_max_batch=4), COLOC], ids=str)
def test_the_same_seed_gives_the_same_run(dep: Deployment) -> None:
    a, b = simulate(H100, CHAT, dep), simulate(H100, CHAT, dep)
    assert (a.ttft, a.itl, a.e2e) == (b.ttft, b.itl, b.e2e)
    other = simulate(H100, Workload(**{**CHAT.__dict__, "seed": 1}), dep)
    assert other.ttft != a.ttft


@pytest.mark.parametrize("isl", [100, 512, 3000])
def test_an_idle_system_answers_in_prefill_plus_overheads(isl: int) -> None:
    idle = Workload(rate=0.001, isl=LengthDist.fixed(isl), osl=LengthDist.fixed(11), num_requests=5)
    oh = H100.overheads
    first_token = H100.prefill_seconds(isl) + oh.router_s
    # Disaggregated: the prefill worker answers the first token; then one decode step per token
    # after it, plus the KV handoff once.
    r = simulate(H100, idle, DISAGG)
    assert r.ttft == pytest.approx([first_token] * 5)
    step = H100.decode_step_seconds(1, isl + 1)
    handoff = H100.kv_transfer_seconds(isl) + oh.handoff_s
    assert r.itl == pytest.approx([step + handoff / 10] * 5)
    assert r.e2e == pytest.approx([first_token + handoff + 10 * step] * 5)
    # Colocated: the first step prefills and decodes, so the first token waits for both.
    r = simulate(H100, idle, COLOC)
    assert r.ttft == pytest.approx([first_token + step] * 5)
    assert r.itl == pytest.approx([9 * step / 10] * 5)  # tokens 1 and 2 come out of the same step


def test_prefix_caching_shortens_prefill_only() -> None:
    base = Workload(rate=0.001, isl=LengthDist.fixed(4000), osl=LengthDist.fixed(2), num_requests=2)
    cached = Workload(**{**base.__dict__, "prefix_cached": 0.75})
    assert cached.sample().prefill_tokens == [1000, 1000] and cached.sample().prompt_tokens == [4000, 4000]
    full, part = simulate(H100, base, DISAGG), simulate(H100, cached, DISAGG)
    assert part.ttft[0] == pytest.approx(H100.prefill_seconds(1000) + H100.overheads.router_s)
    assert part.itl == pytest.approx(full.itl)  # the whole prompt's KV still moves


def test_past_capacity_the_queue_grows_and_ttft_rises_with_rate() -> None:
    # 1 prefill worker takes ~44 ms a prompt (~22 req/s); decode caps near 8 req/s.
    p90 = []
    for rate in (2, 8, 16, 32, 64):
        r = simulate(H100, Workload(**{**CHAT.__dict__, "rate": rate}), DISAGG)
        p90.append(percentile(r.ttft, 90))
    assert p90 == sorted(p90) and p90[-1] > 10 * p90[0]
    over = simulate(H100, Workload(**{**CHAT.__dict__, "rate": 64}), DISAGG)
    assert statistics.mean(over.ttft[-50:]) > 5 * statistics.mean(over.ttft[:50])  # the queue grows
    assert over.throughput() < 25


def test_decode_slots_are_taken_fifo_when_the_batch_is_full() -> None:
    reqs = Requests([0.0, 0.0, 0.0], [100, 100, 100], [100, 100, 100], [5, 5, 5])
    r = simulate(H100, reqs, Deployment(3, 1, decode_max_batch=1))
    done = sorted(r.e2e)
    step = H100.decode_step_seconds(1, 101)
    assert done[1] - done[0] == pytest.approx(4 * step, rel=0.01)  # one after the other
    assert done[2] - done[1] == pytest.approx(4 * step, rel=0.01)


def test_colocated_steps_admit_prompts_within_the_prefill_budget() -> None:
    # A short request starts a step; two prompts arrive during it and wait for the next boundary.
    # Two 2000-token prompts fit the 4096-token budget: one step prefills both.
    reqs = Requests([0.0, 0.001, 0.001], [100, 2000, 2000], [100, 2000, 2000], [50, 3, 3])
    r = simulate(H100, reqs, Deployment.colocated(1))
    assert r.ttft[1] == r.ttft[2]
    # Two 3000-token prompts do not: the second waits one more step.
    reqs = Requests([0.0, 0.001, 0.001], [100, 3000, 3000], [100, 3000, 3000], [50, 3, 3])
    r = simulate(H100, reqs, Deployment.colocated(1))
    second_step = H100.prefill_seconds(3000) + H100.decode_step_seconds(2, (102 + 3001) / 2)
    assert r.ttft[2] - r.ttft[1] == pytest.approx(second_step, rel=0.01)


def _itl(isl: int, dep: Deployment, q: float) -> float:
    w = Workload(rate=3, isl=LengthDist.fixed(isl), osl=LengthDist.fixed(100), num_requests=300)
    return percentile(simulate(H100, w, dep).itl, q)


@pytest.mark.parametrize(("q", "stall"), [(50, 1.3), (90, 1.5)])
def test_long_prompts_stall_colocated_decoding_but_not_disaggregated(q: float, stall: float) -> None:
    # Same rate, same output length: 200-token vs 8000-token prompts.
    short_c, long_c = _itl(200, Deployment.colocated(2), q), _itl(8000, Deployment.colocated(2), q)
    short_d, long_d = _itl(200, Deployment(1, 1), q), _itl(8000, Deployment(1, 1), q)
    assert long_c > stall * short_c  # each 8k prefill stalls the running batch for ~250 ms
    assert long_d < 1.1 * short_d  # decode workers never prefill
    assert long_c > stall * long_d


def test_gamma_arrivals_keep_the_rate_and_add_burstiness() -> None:
    def gaps(shape: float) -> list[float]:
        a = Workload(rate=10, isl=LengthDist.fixed(10), osl=LengthDist.fixed(10), burstiness=shape).sample()
        return [y - x for x, y in zip(a.arrival, a.arrival[1:], strict=False)]

    for shape in (0.25, 1.0, 4.0):
        g = gaps(shape)
        assert statistics.mean(g) == pytest.approx(0.1, rel=0.1)
        cv = statistics.pstdev(g) / statistics.mean(g)
        assert cv == pytest.approx(shape**-0.5, rel=0.15)


def test_lengths_and_durations() -> None:
    w = Workload(rate=50, isl=LengthDist.lognormal(1000, 0.5), osl=LengthDist.uniform(10, 20), duration_s=20)
    s = w.sample()
    assert 900 < len(s) < 1100 and max(s.arrival) <= 20
    assert statistics.mean(s.prompt_tokens) == pytest.approx(1000, rel=0.05)
    assert min(s.output_tokens) >= 10 and max(s.output_tokens) <= 20
    assert LengthDist.parse("lognormal:800:0.3") == LengthDist.lognormal(800, 0.3)
    assert LengthDist.parse("10-20") == LengthDist.uniform(10, 20)
    assert LengthDist.parse("512") == LengthDist.fixed(512)
    with pytest.raises(ValueError, match="not a length"):
        LengthDist.parse("lots")


def test_one_token_outputs_finish_at_prefill() -> None:
    reqs = Requests([0.0, 0.5], [100, 100], [100, 100], [1, 1])
    for dep in (DISAGG, COLOC):
        r = simulate(H100, reqs, dep)
        assert r.e2e == r.ttft and r.itl == [0.0, 0.0]


def test_2000_requests_simulate_well_under_a_second() -> None:
    w = Workload(rate=12, isl=LengthDist.lognormal(1000, 0.5), osl=LengthDist.fixed(200), num_requests=2000)
    for dep in (Deployment(1, 2), Deployment.colocated(3)):
        started = time.perf_counter()
        simulate(H100, w, dep)
        assert time.perf_counter() - started < 0.5
