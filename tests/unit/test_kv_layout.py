"""Pool geometry, byte-run plans and chunking (pure)."""

from __future__ import annotations

import pytest
import torch
from baton_worker.kv.errors import KvTransferError
from baton_worker.kv.grpc_stream import iter_chunks, plan_chunks, write_chunk
from baton_worker.kv.layout import PoolGeometry, Run, blocks_needed, merge_runs, plan_runs, split_runs

torch.set_num_threads(1)


def geo(blocks: int = 8, heads: int = 4, layers: int = 2, dtype: str = "float32") -> PoolGeometry:
    return PoolGeometry(
        num_layers=layers, num_blocks=blocks, num_kv_heads=heads, block_size=4, head_dim=2, dtype=dtype
    )


@pytest.mark.parametrize(
    ("runs", "want"),
    [
        ([], []),
        ([Run(0, 0, 8), Run(8, 8, 8)], [Run(0, 0, 16)]),
        ([Run(0, 0, 8), Run(8, 16, 8)], [Run(0, 0, 8), Run(8, 16, 8)]),  # dst not contiguous
        ([Run(0, 0, 8), Run(16, 8, 8)], [Run(0, 0, 8), Run(16, 8, 8)]),  # src not contiguous
        ([Run(0, 0, 0), Run(0, 0, 4)], [Run(0, 0, 4)]),  # empty runs dropped
    ],
)
def test_kv_merge_runs(runs: list[Run], want: list[Run]) -> None:
    assert merge_runs(runs) == want


K = 4096


def _bytes_of(runs: list[Run]) -> list[tuple[int, int]]:
    """(src, dst) of every byte moved, in order (small inputs only)."""
    return [(r.src + i, r.dst + i) for r in runs for i in range(r.length)]


@pytest.mark.parametrize(
    ("runs", "lanes", "min_lane", "want"),
    [
        ([], 4, K, []),
        # one lane asked: untouched
        ([Run(0, 0, 8 * K)], 1, K, [[Run(0, 0, 8 * K)]]),
        # too small to split: each lane would get less than min_lane
        ([Run(0, 0, 3 * K)], 2, 2 * K, [[Run(0, 0, 3 * K)]]),
        # one long run cut in two aligned halves
        ([Run(0, 100 * K, 8 * K)], 2, K, [[Run(0, 100 * K, 4 * K)], [Run(4 * K, 104 * K, 4 * K)]]),
        # whole runs dealt out when they fall on the share boundary
        (
            [
                Run(0, 0, 2 * K),
                Run(10 * K, 20 * K, 2 * K),
                Run(30 * K, 40 * K, 2 * K),
                Run(50 * K, 60 * K, 2 * K),
            ],
            2,
            K,
            [
                [Run(0, 0, 2 * K), Run(10 * K, 20 * K, 2 * K)],
                [Run(30 * K, 40 * K, 2 * K), Run(50 * K, 60 * K, 2 * K)],
            ],
        ),
        # lanes capped by total // min_lane (3 asked, 2 fit)
        ([Run(0, 0, 5 * K)], 3, 2 * K, [[Run(0, 0, 3 * K)], [Run(3 * K, 3 * K, 2 * K)]]),
        # the cut is page-aligned: the share is 2.5 pages, the first lane takes 3
        ([Run(0, 0, 5 * K)], 2, K, [[Run(0, 0, 3 * K)], [Run(3 * K, 3 * K, 2 * K)]]),
        # empty runs dropped
        ([Run(0, 0, 0), Run(0, 0, 2 * K)], 2, K, [[Run(0, 0, K)], [Run(K, K, K)]]),
    ],
)
def test_kv_split_runs(runs: list[Run], lanes: int, min_lane: int, want: list[list[Run]]) -> None:
    assert split_runs(runs, lanes, min_lane) == want


@pytest.mark.parametrize("lanes", [2, 3, 4, 7])
def test_kv_split_runs_moves_every_byte_once_and_balances(lanes: int) -> None:
    runs = [Run(i * 64, 1000 + i * 80, 40 + 13 * i) for i in range(9)]
    groups = split_runs(runs, lanes, min_lane_bytes=16, align=8)
    assert len(groups) == lanes
    assert [b for g in groups for b in _bytes_of(g)] == _bytes_of(runs)
    sizes = [sum(r.length for r in g) for g in groups]
    share = -(-sum(sizes) // lanes)
    assert max(sizes) <= share + 8, sizes


@pytest.mark.parametrize(("lanes", "min_lane", "align"), [(0, 1, 1), (2, 0, 1), (2, 1, 0)])
def test_kv_split_runs_refuses_bad_arguments(lanes: int, min_lane: int, align: int) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        split_runs([Run(0, 0, 8)], lanes, min_lane, align)


def test_kv_offsets_follow_lnkhbd() -> None:
    g = geo()
    assert g.head_bytes == 4 * 2 * 4
    assert g.block_bytes == 2 * 4 * g.head_bytes
    assert g.offset(1, 3, 1, 2) == ((((1 * 8 + 3) * 2 + 1) * 4 + 2) * g.head_bytes)
    assert g.total_bytes == 2 * 8 * g.block_bytes


def test_kv_plan_all_heads_contiguous_blocks_is_one_run_per_layer() -> None:
    g = geo()
    runs = plan_runs(g, [2, 3, 4], 0, g, [5, 6, 7], 0, 0, 4)
    assert runs == [
        Run(g.offset(layer, 2, 0, 0), g.offset(layer, 5, 0, 0), 3 * g.block_bytes) for layer in (0, 1)
    ]


def test_kv_plan_scattered_blocks_and_head_range() -> None:
    g_src, g_dst = geo(heads=4), geo(heads=2)
    runs = plan_runs(g_src, [1, 6], 0, g_dst, [0, 1], 2, 2, 4)  # decode rank holds global heads 2..3
    assert len(runs) == 2 * 2 * 2  # layers x blocks x K/V, none mergeable on the source side
    assert runs[0] == Run(g_src.offset(0, 1, 0, 2), g_dst.offset(0, 0, 0, 0), 2 * g_src.head_bytes)


def test_kv_plan_moves_the_right_bytes() -> None:
    """Executing the plan with plain copies equals copying the tensor slices."""
    g_src, g_dst = geo(heads=4), geo(blocks=5, heads=4)
    src = torch.randn(2, 8, 2, 4, 4, 2)
    dst = torch.zeros(2, 5, 2, 4, 4, 2)
    s8, d8 = src.view(-1).view(torch.uint8), dst.view(-1).view(torch.uint8)
    for r in plan_runs(g_src, [6, 2, 3], 0, g_dst, [4, 0, 1], 0, 0, 4):
        d8[r.dst : r.dst + r.length] = s8[r.src : r.src + r.length]
    assert torch.equal(dst[:, [4, 0, 1]], src[:, [6, 2, 3]])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"src_blocks": [9]}, "block_ids"),
        ({"dst_blocks": [1, 2]}, "block_ids"),
        ({"head_end": 5}, "head range"),
    ],
)
def test_kv_plan_refuses_what_does_not_fit(kwargs: dict, field: str) -> None:
    args = {"src_blocks": [1], "dst_blocks": [1], "head_end": 4}
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        plan_runs(geo(), args["src_blocks"], 0, geo(), args["dst_blocks"], 0, 0, args["head_end"])


def test_kv_plan_refuses_layout_mismatch_naming_both() -> None:
    with pytest.raises(ValueError, match="dtype: source 'float32', destination 'bfloat16'"):
        plan_runs(geo(), [0], 0, geo(dtype="bfloat16"), [0], 0, 0, 4)


def test_kv_geometry_validates_fields() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        geo(blocks=0)
    with pytest.raises(ValueError, match="dtype"):
        geo(dtype="int8")


@pytest.mark.parametrize(("tokens", "want"), [(0, 0), (1, 1), (16, 1), (17, 2)])
def test_kv_blocks_needed(tokens: int, want: int) -> None:
    assert blocks_needed(tokens, 16) == want


def test_kv_plan_chunks_groups_consecutive_blocks_under_the_cap() -> None:
    chunks = plan_chunks([3, 4, 5, 9, 10], num_layers=2, bytes_per_block=100, max_chunk_bytes=200)
    assert [(c.layer, c.block_index, c.count) for c in chunks] == [
        (0, 0, 2), (0, 2, 1), (0, 3, 2), (1, 0, 2), (1, 2, 1), (1, 3, 2)
    ]  # fmt: skip


@pytest.mark.parametrize("heads", [(0, 4), (1, 3)])
def test_kv_chunks_round_trip_into_other_blocks(heads: tuple[int, int]) -> None:
    src = torch.randn(2, 8, 2, 4, 4, 2)
    dst = torch.zeros(2, 6, 2, 4, 4, 2)
    h0, h1 = heads
    total = 0
    for spec, data in iter_chunks(src, [1, 2, 3, 7], h0, h1, max_chunk_bytes=300):
        total += write_chunk(dst, [5, 0, 1, 3], h0, h1, spec.layer, spec.block_index, spec.count, data)
    assert total == 2 * 4 * 2 * (h1 - h0) * 4 * 2 * 4
    assert torch.equal(dst[:, [5, 0, 1, 3], :, h0:h1], src[:, [1, 2, 3, 7], :, h0:h1])
    assert not dst[:, [2, 4]].any()


@pytest.mark.parametrize(
    ("layer", "index", "count", "nbytes", "field"),
    [(5, 0, 1, 256, "layer"), (0, 3, 2, 512, "block_index"), (0, 0, 1, 100, "data")],
)
def test_kv_write_chunk_refuses_corrupt_chunks(
    layer: int, index: int, count: int, nbytes: int, field: str
) -> None:
    dst = torch.zeros(2, 6, 2, 4, 4, 2)
    with pytest.raises(KvTransferError, match=field):
        write_chunk(dst, [0, 1, 2, 3], 0, 4, layer, index, count, bytes(nbytes))


@pytest.mark.parametrize("heads", [(0, 4), (1, 3)])
@pytest.mark.parametrize("blocks", [([0, 1, 2, 5, 6], [3, 4, 5, 0, 1]), ([7, 6, 5], [0, 1, 2]), ([2], [2])])
def test_kv_fast_and_general_plans_move_the_same_bytes(
    heads: tuple[int, int], blocks: tuple[list[int], list[int]]
) -> None:
    g = geo()
    src = torch.randn(2, 8, 2, 4, 4, 2)
    dst = torch.zeros(2, 8, 2, 4, 4, 2)
    s8, d8 = src.view(-1).view(torch.uint8), dst.view(-1).view(torch.uint8)
    h0, h1 = heads
    for r in plan_runs(g, blocks[0], 0, g, blocks[1], 0, h0, h1):
        d8[r.dst : r.dst + r.length] = s8[r.src : r.src + r.length]
    assert torch.equal(dst[:, blocks[1], :, h0:h1], src[:, blocks[0], :, h0:h1])
    mask = torch.ones_like(dst, dtype=torch.bool)
    mask[:, blocks[1], :, h0:h1] = False
    assert not dst[mask].any()


def test_kv_block_pair_runs() -> None:
    from baton_worker.kv.layout import block_pair_runs

    assert block_pair_runs([0, 1, 2, 5, 6], [3, 4, 5, 0, 1]) == [(0, 3, 3), (5, 0, 2)]
    assert block_pair_runs([3, 2], [0, 1]) == [(3, 0, 1), (2, 1, 1)]
