"""Placement decisions (pure), and the chunk alignment of failover."""

from __future__ import annotations

import pytest
from baton_worker.router.decode_stream import new_tokens
from baton_worker.router.placement import (
    DisaggConfig,
    WorkerLoad,
    choose_decode,
    choose_prefill,
    decide_prefill,
    layout_differences,
)

P = WorkerLoad


@pytest.mark.parametrize(
    ("workers", "exclude", "want"),
    [
        ([], (), None),
        ([P("a", healthy=False)], (), None),
        ([P("a", queued_prompt_tokens=100), P("b", queued_prompt_tokens=10)], (), "b"),
        (
            [P("a", inflight_prompt_tokens=500), P("b", queued_prompt_tokens=10)],
            (),
            "b",
        ),  # router's own count
        ([P("a"), P("b", inflight=1)], (), "a"),  # tie on tokens: fewer in flight
        ([P("b"), P("a")], (), "a"),  # full tie: by address, deterministic
        ([P("a"), P("b", queued_prompt_tokens=9)], ("a",), "b"),
        ([P("a", healthy=False), P("b", queued_prompt_tokens=9999)], (), "b"),
    ],
)
def test_choose_prefill(workers, exclude, want) -> None:
    got = choose_prefill(workers, exclude)
    assert (got.address if got else None) == want


def D(
    addr: str, free: int, running: int = 0, inflight: int = 0, batch: int = 64, healthy: bool = True
) -> WorkerLoad:
    return WorkerLoad(
        addr,
        healthy=healthy,
        free_blocks=free,
        total_blocks=100,
        running=running,
        inflight=inflight,
        max_batch_size=batch,
    )


@pytest.mark.parametrize(
    ("workers", "exclude", "want"),
    [
        ([D("a", 10), D("b", 90)], (), "b"),  # more free KV
        ([D("a", 90, running=60), D("b", 80, running=2)], (), "b"),  # much less load outweighs a bit more KV
        ([D("a", 100, running=64), D("b", 5, running=10)], (), "b"),  # a's batch is full
        ([D("a", 50, inflight=3), D("b", 50, inflight=1)], (), "b"),  # router's own in-flight count
        ([D("a", 50, healthy=False), D("b", 1)], (), "b"),
        ([D("a", 90), D("b", 10)], ("a",), "b"),
        ([D("a", 90)], ("a",), None),
    ],
)
def test_choose_decode(workers, exclude, want) -> None:
    got = choose_decode(workers, exclude)
    assert (got.address if got else None) == want


CFG = DisaggConfig(local_prefill_max_tokens=16, prefill_saturation_tokens=1000)


@pytest.mark.parametrize(
    ("tokens", "workers", "exclude", "remote", "reason", "worker"),
    [
        (16, [P("p")], (), False, "short_prompt", None),
        (17, [P("p")], (), True, "disaggregated", "p"),
        (17, [], (), False, "no_prefill_worker", None),
        (17, [P("p", healthy=False)], (), False, "no_prefill_worker", None),
        (17, [P("p")], ("p",), False, "no_prefill_worker", None),
        (500, [P("p", queued_prompt_tokens=1000)], (), False, "prefill_saturated", None),
        (
            500,
            [P("p", queued_prompt_tokens=1000), P("q", queued_prompt_tokens=999)],
            (),
            True,
            "disaggregated",
            "q",
        ),
    ],
)
def test_decide_prefill(tokens, workers, exclude, remote, reason, worker) -> None:
    d = decide_prefill(tokens, workers, CFG, exclude)
    assert (d.remote, d.reason, d.worker) == (remote, reason, worker)


@pytest.mark.parametrize(
    ("decode", "prefill", "want"),
    [
        # "new" has more free KV, but only "old" has a prefill worker of its generation left
        (
            [P("old", kv_compat="h1"), P("new", kv_compat="h2", free_blocks=9, total_blocks=10)],
            [P("p", kv_compat="h1")],
            "old",
        ),
        # an unhealthy prefill worker pairs nobody
        (
            [P("old", kv_compat="h1"), P("new", kv_compat="h2", free_blocks=9, total_blocks=10)],
            [P("p", kv_compat="h1", healthy=False)],
            "new",
        ),
        # no prefill worker at all, or all compatible: load alone decides
        ([P("old", kv_compat="h1"), P("new", kv_compat="h2", free_blocks=9, total_blocks=10)], [], "new"),
        (
            [P("a", kv_compat="h1"), P("b", kv_compat="h1", free_blocks=9, total_blocks=10)],
            [P("p", kv_compat="h1")],
            "b",
        ),
        # a full batch still ranks last, paired or not
        (
            [P("old", kv_compat="h1", running=4, max_batch_size=4), P("new", kv_compat="h2")],
            [P("p", kv_compat="h1")],
            "new",
        ),
        # unknown hashes pair with anything
        (
            [P("old"), P("new", kv_compat="h2", free_blocks=9, total_blocks=10)],
            [P("p", kv_compat="h1")],
            "old",
        ),
    ],
)
def test_choose_decode_prefers_workers_a_prefill_worker_can_pair_with(decode, prefill, want) -> None:
    assert choose_decode(decode, (), prefill).address == want


@pytest.mark.parametrize(
    ("workers", "decode_compat", "exclude", "remote", "reason", "worker"),
    [
        # the least-loaded prefill worker is skipped when the decode worker cannot use its KV
        (
            [P("old", kv_compat="h1"), P("new", kv_compat="h2", queued_prompt_tokens=500)],
            "h2",
            (),
            True,
            "disaggregated",
            "new",
        ),
        (
            [P("old", kv_compat="h1", queued_prompt_tokens=500), P("new", kv_compat="h2")],
            "h1",
            (),
            True,
            "disaggregated",
            "old",
        ),
        # none compatible: the decode worker prefills locally, with its own reason
        ([P("a", kv_compat="h1"), P("b", kv_compat="h1")], "h2", (), False, "kv_incompatible", None),
        # the compatible one is excluded (failed this request before), the rest are not compatible
        ([P("a", kv_compat="h1"), P("b", kv_compat="h2")], "h2", ("b",), False, "kv_incompatible", None),
        # unhealthy compatible, healthy incompatible: still incompatible, not "no worker"
        (
            [P("a", kv_compat="h1"), P("b", kv_compat="h2", healthy=False)],
            "h2",
            (),
            False,
            "kv_incompatible",
            None,
        ),
        ([P("a", kv_compat="h1", healthy=False)], "h2", (), False, "no_prefill_worker", None),
        # unknown hashes (workers of an older version) count as compatible on either side
        ([P("a"), P("b", kv_compat="h1", queued_prompt_tokens=1)], "h2", (), True, "disaggregated", "a"),
        ([P("a", kv_compat="h1")], "", (), True, "disaggregated", "a"),
        # compatibility comes before saturation: the compatible worker's load decides
        (
            [P("a", kv_compat="h1"), P("b", kv_compat="h2", queued_prompt_tokens=1000)],
            "h2",
            (),
            False,
            "prefill_saturated",
            None,
        ),
    ],
)
def test_decide_prefill_pairs_only_kv_compatible_workers(
    workers, decode_compat, exclude, remote, reason, worker
) -> None:
    d = decide_prefill(500, workers, CFG, exclude, decode_compat=decode_compat)
    assert (d.remote, d.reason, d.worker) == (remote, reason, worker)


@pytest.mark.parametrize(
    ("ids", "total", "known", "new", "gap"),
    [
        ([7], 1, 1, [], 0),  # decode echoes the prefill worker's first token: dropped
        ([7, 8], 2, 1, [8], 0),
        ([8], 2, 1, [8], 0),  # decode starts after the first token
        ([9, 10], 12, 10, [9, 10], 0),  # resumed after 10 tokens
        ([9, 10], 12, 11, [10], 0),
        ([5], 13, 10, [5], 2),  # worker skipped indices 10 and 11
        ([], 3, 3, [], 0),  # a finish-only chunk
    ],
)
def test_new_tokens(ids, total, known, new, gap) -> None:
    assert new_tokens(ids, total, known) == (new, gap)


@pytest.mark.parametrize(
    ("prefill", "decode", "want"),
    [
        (
            '{"block_size":8,"dtype":"bfloat16"}',
            '{"block_size":16,"dtype":"bfloat16"}',
            "block_size: 8 != 16",
        ),
        (
            '{"dtype":"float16","revision":"b"}',
            '{"dtype":"bfloat16","revision":"a"}',
            "dtype: 'float16' != 'bfloat16', revision: 'b' != 'a'",
        ),
        ('{"a":1}', '{"a":1,"b":2}', "b: None != 2"),
        ('{"a":1}', '{"a":1}', ""),
        ("", '{"a":1}', ""),  # unknown (an older worker)
        ("not json", '{"a":1}', ""),
        ("[1]", '{"a":1}', ""),
    ],
)
def test_compat_differences_name_each_field(prefill: str, decode: str, want: str) -> None:
    assert layout_differences(prefill, decode) == want
