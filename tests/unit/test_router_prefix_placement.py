"""KV-aware placement (pure): the router's view of each worker's prefix cache, and how a cached
prefix weighs against load for prefill and decode."""

from __future__ import annotations

import pytest
from baton_worker.prefix_hash import block_hashes, cache_salt
from baton_worker.router.placement import WorkerLoad, choose_decode, choose_prefill
from baton_worker.router.prefix_index import PrefixView, PromptHashes, apply_events, cached_tokens

SALT = cache_salt("w", "float32", 4, "LNKHBD")
PROMPT = list(range(100, 120))  # 5 blocks of 4


def _view(blocks: int, engine: str = "e1", seq: int = 1) -> PrefixView:
    return apply_events(PrefixView(), engine, SALT, 4, seq, True, block_hashes(PROMPT, 4, SALT)[:blocks], ())


@pytest.mark.parametrize(("held", "expected"), [(0, 0), (1, 4), (3, 12), (5, 20)])
def test_cached_tokens_counts_the_leading_blocks_held(held: int, expected: int) -> None:
    assert cached_tokens(_view(held), PromptHashes(PROMPT)) == expected


def test_a_gap_ends_the_cached_prefix_and_another_salt_matches_nothing() -> None:
    hashes = block_hashes(PROMPT, 4, SALT)
    view = apply_events(PrefixView(), "e1", SALT, 4, 1, True, [hashes[0], hashes[2]], ())
    assert cached_tokens(view, PromptHashes(PROMPT)) == 4
    other = apply_events(
        PrefixView(), "e1", cache_salt("other", "float32", 4, "LNKHBD"), 4, 1, True, hashes, ()
    )
    assert cached_tokens(other, PromptHashes(PROMPT)) == 0
    assert cached_tokens(None, PromptHashes(PROMPT)) == 0


def test_events_update_the_view_and_a_restart_replaces_it() -> None:
    hashes = block_hashes(PROMPT, 4, SALT)
    view = _view(2)
    view = apply_events(view, "e1", SALT, 4, 5, False, hashes[2:4], [hashes[0]])
    assert view.seq == 5 and view.hashes == set(hashes[1:4])
    assert cached_tokens(view, PromptHashes(PROMPT)) == 0  # its first block was evicted
    # The worker restarted (another engine id): what the old one held is gone.
    view = apply_events(view, "e2", SALT, 4, 1, False, hashes[:1], ())
    assert view.engine_id == "e2" and view.hashes == {hashes[0]}


def _w(address: str, cached: int = 0, **kw: int) -> WorkerLoad:
    base = {"free_blocks": 100, "total_blocks": 100, "max_batch_size": 8}
    return WorkerLoad(address=address, cached_tokens=cached, **(base | kw))


@pytest.mark.parametrize(
    ("workers", "weight", "expected"),
    [
        # Equal load: the one holding the prompt's prefix.
        ([_w("a"), _w("b", cached=768)], 1.0, "b"),
        # Weight 0: load alone (a ties, the address decides).
        ([_w("a"), _w("b", cached=768)], 0.0, "a"),
        # Cached 768 of 1024 tokens saves more than b's 500 pending tokens cost.
        ([_w("a"), _w("b", cached=768, queued_prompt_tokens=500)], 1.0, "b"),
        # ... but not 1000 pending tokens.
        ([_w("a"), _w("b", cached=768, queued_prompt_tokens=1000)], 1.0, "a"),
        # An unhealthy worker is never chosen, however much it holds.
        ([_w("a"), WorkerLoad("b", healthy=False, cached_tokens=1024)], 1.0, "a"),
    ],
)
def test_prefill_placement_weighs_the_cached_prefix_as_work_saved(
    workers: list[WorkerLoad], weight: float, expected: str
) -> None:
    best = choose_prefill(workers, (), 1024, weight)
    assert best is not None and best.address == expected


@pytest.mark.parametrize(
    ("workers", "weight", "expected"),
    [
        ([_w("a"), _w("b", cached=900)], 1.0, "b"),
        ([_w("a"), _w("b", cached=900)], 0.0, "a"),
        # A worker holding the prefix but with a full batch loses to one with free slots.
        ([_w("a"), _w("b", cached=1000, running=8)], 1.0, "a"),
        # Holding 90% of the prompt outweighs 3 more requests on an 8-slot batch (0.375) ...
        ([_w("a"), _w("b", cached=900, running=3)], 1.0, "b"),
        # ... but holding 10% does not.
        ([_w("a"), _w("b", cached=100, running=3)], 1.0, "a"),
    ],
)
def test_decode_placement_weighs_the_cached_fraction_against_load(
    workers: list[WorkerLoad], weight: float, expected: str
) -> None:
    best = choose_decode(workers, (), (), 1000, weight)
    assert best is not None and best.address == expected
