"""`bench serve --workload multiturn`: one round's figures from its turns and the counters around it."""

from __future__ import annotations

from baton_dev.bench.multiturn import round_figures
from baton_dev.bench.serve import Sample


def test_round_figures_are_deltas_of_the_counters_per_request() -> None:
    turns = [
        Sample(True, 0.010, 0.5, 32, (), text="a", prompt_tokens=1000),
        Sample(True, 0.030, 0.5, 32, (), text="b", prompt_tokens=1000),
        Sample(False, 0, 0, 0, (), "HTTP 503"),
    ]
    before = {
        "baton_kv_transfer_bytes_sum": 1_000,
        "baton_worker_prefix_cache_hit_tokens_total:prefill": 100,
        "baton_worker_prefix_cache_hit_tokens_total:decode": 0,
        "baton_router_prefix_cached_tokens_total:decode": 50,
        "baton_router_prefix_best_tokens_total:decode": 50,
    }
    after = {
        "baton_kv_transfer_bytes_sum": 401_000,
        "baton_worker_prefix_cache_hit_tokens_total:prefill": 1_700,
        "baton_worker_prefix_cache_hit_tokens_total:decode": 1_200,
        "baton_router_prefix_cached_tokens_total:decode": 1_250,
        "baton_router_prefix_best_tokens_total:decode": 1_650,
    }
    r = round_figures(2, turns, before, after)
    assert (r.requests, r.ok, r.prompt_tokens_mean) == (3, 2, 1000.0)
    assert (r.ttft_p50_ms, r.ttft_p90_ms) == (10.0, 30.0)
    assert r.kv_bytes_per_request == 200_000.0
    assert (r.prefill_hit_rate, r.decode_hit_rate) == (0.8, 0.6)
    assert r.decode_cached_fraction == 0.6 and r.decode_vs_oracle == 0.75
    # No placement had anything cached anywhere: the router matched the oracle.
    assert round_figures(1, turns, before, before).decode_vs_oracle == 1.0
