"""Unit tests of the tensor-parallel KV plans (baton_worker.kv.tp_plan)."""

from __future__ import annotations

import pytest
from baton_worker.kv.tp_plan import (
    HeadRange,
    ShardPull,
    TpConfigError,
    check_tp_pair,
    plan_pulls,
    plan_rank_pulls,
    rank_heads,
)


@pytest.mark.parametrize(
    ("heads", "tp", "rank", "want"),
    [(8, 1, 0, (0, 8)), (8, 2, 1, (4, 8)), (8, 4, 2, (4, 6)), (8, 8, 7, (7, 8)), (32, 8, 3, (12, 16))],
)
def test_rank_heads(heads: int, tp: int, rank: int, want: tuple[int, int]) -> None:
    assert rank_heads(heads, tp, rank) == HeadRange(*want)


@pytest.mark.parametrize(
    ("prefill", "decode", "want"),
    [
        # prefill TP 2 -> decode TP 1: the one decode rank reads both prefill ranks.
        (2, 1, {0: [ShardPull(0, 0, HeadRange(0, 4)), ShardPull(1, 4, HeadRange(4, 8))]}),
        # prefill TP 1 -> decode TP 2: each decode rank reads its half of the single shard.
        (1, 2, {0: [ShardPull(0, 0, HeadRange(0, 4))], 1: [ShardPull(0, 0, HeadRange(4, 8))]}),
        # prefill TP 4 -> decode TP 2: each decode rank reads two prefill ranks whole.
        (
            4,
            2,
            {
                0: [ShardPull(0, 0, HeadRange(0, 2)), ShardPull(1, 2, HeadRange(2, 4))],
                1: [ShardPull(2, 4, HeadRange(4, 6)), ShardPull(3, 6, HeadRange(6, 8))],
            },
        ),
        # prefill TP 2 -> decode TP 4: each decode rank reads a quarter of one prefill rank.
        (2, 4, {d: [ShardPull(d // 2, 4 * (d // 2), HeadRange(2 * d, 2 * d + 2))] for d in range(4)}),
    ],
)
def test_plan_pulls_table(prefill: int, decode: int, want: dict) -> None:
    assert plan_pulls(8, prefill, decode) == want


@pytest.mark.parametrize("prefill", [1, 2, 4, 8])
@pytest.mark.parametrize("decode", [1, 2, 4, 8])
def test_every_valid_pair_covers_every_head_once(prefill: int, decode: int) -> None:
    plan = plan_pulls(8, prefill, decode)
    assert sorted(plan) == list(range(decode))
    seen = []
    for d, pulls in plan.items():
        mine = rank_heads(8, decode, d)
        for p in pulls:
            src = rank_heads(8, prefill, p.src_rank)
            assert p.src_start == src.start
            assert src.start <= p.heads.start and p.heads.end <= src.end  # held by that rank
            assert mine.start <= p.heads.start and p.heads.end <= mine.end  # wanted by this rank
            seen.extend(range(p.heads.start, p.heads.end))
    assert seen == list(range(8))


@pytest.mark.parametrize(
    ("heads", "prefill", "decode", "field", "numbers"),
    [
        (4, 8, 1, "prefill.tensorParallelSize", ["8", "4 KV heads"]),
        (4, 1, 8, "decode.tensorParallelSize", ["8", "4 KV heads"]),
        (6, 4, 2, "prefill.tensorParallelSize", ["4", "6 KV heads"]),
        (8, 3, 1, "prefill.tensorParallelSize", ["3", "1, 2, 4, 8"]),
        (8, 1, 16, "decode.tensorParallelSize", ["16"]),
    ],
)
def test_impossible_pairs_are_refused_naming_the_numbers(
    heads: int, prefill: int, decode: int, field: str, numbers: list[str]
) -> None:
    with pytest.raises(TpConfigError) as err:
        check_tp_pair(heads, prefill, decode)
    assert err.value.field == field
    for n in numbers:
        assert n in str(err.value)
    with pytest.raises(TpConfigError):
        plan_pulls(heads, prefill, decode)


def test_attention_heads_and_mlp_width_are_checked() -> None:
    with pytest.raises(TpConfigError, match="12 attention heads"):
        check_tp_pair(8, 8, 1, num_attention_heads=12)
    with pytest.raises(TpConfigError, match="MLP width 100"):
        check_tp_pair(8, 1, 8, intermediate_size=100)
    check_tp_pair(8, 8, 8, num_attention_heads=32, intermediate_size=14336)


def test_malformed_shards_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[4, 6\)"):
        plan_rank_pulls([(0, 0, 4), (1, 6, 8)], HeadRange(0, 8))  # a gap
    with pytest.raises(ValueError, match="held by no prefill rank"):
        plan_rank_pulls([(0, 0, 4)], HeadRange(2, 8))  # short
    with pytest.raises(ValueError):
        plan_rank_pulls([(0, 0, 4), (1, 2, 8)], HeadRange(0, 8))  # overlap
    with pytest.raises(ValueError):
        HeadRange(3, 3)
