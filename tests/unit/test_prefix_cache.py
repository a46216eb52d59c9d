"""Prefix caching's pure parts: block hashes, and the pool's reference counts, names and LRU eviction."""

from __future__ import annotations

import pytest
from baton_worker.engine import KvBlockPool
from baton_worker.prefix_hash import block_hashes, cache_salt, extend_hashes, reusable_blocks

SALT = cache_salt("weights-a", "float32", 4, "LNKHBD")


def _pool(num_blocks: int = 8, block_size: int = 4) -> KvBlockPool:
    return KvBlockPool(num_layers=1, num_kv_heads=1, head_dim=2, num_blocks=num_blocks, block_size=block_size)


def test_hashes_name_full_blocks_by_their_whole_prefix() -> None:
    a = block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], 4, SALT)
    assert len(a) == 2  # the partial third block has no name yet
    b = block_hashes([1, 2, 3, 4, 5, 6, 7, 0], 4, SALT)
    assert a[0] == b[0] and a[1] != b[1]
    # The same block of tokens after a different first block is another block.
    c = block_hashes([0, 2, 3, 4, 5, 6, 7, 8], 4, SALT)
    assert c[1] != a[1]
    # Another model, dtype or block size never shares a name.
    for other in (
        cache_salt("weights-b", "float32", 4, "LNKHBD"),
        cache_salt("weights-a", "bfloat16", 4, "LNKHBD"),
        cache_salt("weights-a", "float32", 8, "LNKHBD"),
    ):
        assert block_hashes([1, 2, 3, 4], 4, other) != a[:1]
    # Extending a chain equals hashing the longer sequence at once.
    assert extend_hashes(a[:1], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 4, SALT) == block_hashes(
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 4, SALT
    )


@pytest.mark.parametrize(
    ("num_tokens", "must_compute_last", "expected"),
    [
        (0, True, 0),
        (3, True, 0),
        (4, True, 0),  # the last token must be computed: its block stays out
        (5, True, 1),
        (8, True, 1),
        (9, True, 2),
        (4, False, 1),  # a pull of finished KV reuses every full block
        (9, False, 2),
    ],
)
def test_reusable_blocks(num_tokens: int, must_compute_last: bool, expected: int) -> None:
    assert reusable_blocks(num_tokens, 4, must_compute_last) == expected


def test_a_freed_named_block_stays_cached_and_is_matched_again() -> None:
    pool = _pool()
    hashes = pool.prefix_hashes(list(range(12)))
    blocks = pool.allocate(3)
    assert blocks is not None
    assert pool.register(blocks, hashes) == 3
    pool.free(blocks)
    assert pool.num_free == 8  # cached blocks nobody holds count as free
    assert pool.usage().cached_blocks == 3
    # A longer prompt with the same first 8 tokens and a different third block.
    other = pool.prefix_hashes([*range(8), 99, 98, 97, 96])
    got = pool.match_prefix(other)
    assert got == blocks[:2]
    stats = pool.prefix_stats()
    assert (stats.queried_tokens, stats.hit_tokens) == (12, 8)
    pool.free(got)
    assert pool.leaked_blocks() == []


def test_shared_blocks_are_freed_only_by_their_last_holder() -> None:
    pool = _pool()
    hashes = pool.prefix_hashes(list(range(8)))
    mine = pool.allocate(2)
    assert mine is not None
    pool.register(mine, hashes)
    theirs = pool.match_prefix(hashes)
    assert theirs == mine
    pool.free(mine)
    assert pool.leaked_blocks() == sorted(mine)
    # Held blocks are never evicted, whatever the pressure.
    assert pool.allocate(7) is None
    assert pool.allocate(6) is not None
    pool.free(theirs)
    with pytest.raises(ValueError, match="double free"):
        pool.free(theirs)


def test_allocation_evicts_the_least_recently_used_cached_block_first() -> None:
    pool = _pool(num_blocks=4)
    a, b = pool.prefix_hashes(list(range(4))), pool.prefix_hashes(list(range(100, 104)))
    ba, bb = pool.allocate(1), pool.allocate(1)
    assert ba is not None and bb is not None
    pool.register(ba, a)
    pool.register(bb, b)
    pool.free(ba)
    pool.free(bb)
    # a was released first, then touched again: b is now the least recently used.
    pool.free(pool.match_prefix(a))
    taken = pool.allocate(3)  # the two never-named blocks, then one eviction
    assert taken is not None and bb[0] in taken and ba[0] not in taken
    assert pool.prefix_stats().evicted_blocks == 1
    assert pool.match_prefix(b) == []
    assert pool.match_prefix(a) == ba


def test_a_name_already_taken_is_not_given_to_a_second_block() -> None:
    pool = _pool()
    hashes = pool.prefix_hashes(list(range(4)))
    first, second = pool.allocate(1), pool.allocate(1)
    assert first is not None and second is not None
    assert pool.register(first, hashes) == 1
    assert pool.register(second, hashes) == 0  # computed twice concurrently: one copy is named
    pool.free(second)
    pool.free(first)
    assert pool.usage().cached_blocks == 1
    assert pool.match_prefix(hashes) == first


def test_prefix_events_give_the_net_change_since_a_sequence_number() -> None:
    pool = _pool(num_blocks=2)
    full = pool.prefix_events(-1)
    assert full.reset and full.stored == () and full.seq == 0
    a, b, c = (pool.prefix_hashes(list(range(k, k + 4))) for k in (0, 100, 200))
    blocks = pool.allocate(2)
    assert blocks is not None
    pool.register(blocks[:1], a)
    pool.register(blocks[1:], b)
    pool.free(blocks)
    after_ab = pool.prefix_events(0)
    assert not after_ab.reset and set(after_ab.stored) == {a[0], b[0]} and after_ab.evicted == ()
    # c evicts a (the least recently used): a reader at after_ab.seq learns exactly that.
    taken = pool.allocate(1)
    assert taken is not None
    pool.register(taken, c)
    delta = pool.prefix_events(after_ab.seq)
    assert (delta.stored, delta.evicted) == ((c[0],), (a[0],))
    assert pool.prefix_events(delta.seq).stored == ()
    # A number this pool never gave (another engine's) gets the full listing.
    again = pool.prefix_events(delta.seq + 5)
    assert again.reset and set(again.stored) == {b[0], c[0]}
    pool.free(taken)
