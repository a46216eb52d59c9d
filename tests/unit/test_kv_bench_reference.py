"""The reference copy of `baton bench kv`: the runs of a NIXL READ, dealt out to as many threads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from baton_dev.bench import kv as bench
from baton_dev.bench.kv_reference import CopyReference, lanes_used, pull_runs
from baton_worker.kv.layout import split_runs
from baton_worker.kv.nixl_agent import READ_LANE_MIN_BYTES

POOL_BLOCKS = 20  # 1 MiB per block in the bench's geometry


@pytest.fixture(scope="module")
def reference() -> Iterator[CopyReference]:
    dst = torch.zeros(
        bench.LAYERS, POOL_BLOCKS, 2, bench.HEADS, bench.BLOCK, bench.HEAD_DIM, dtype=torch.bfloat16
    )
    ref = CopyReference(dst, lanes=2)
    yield ref
    ref.close()


@pytest.mark.parametrize(("blocks", "lanes", "threads"), [(4, 2, 1), (17, 2, 2), (17, 1, 1)])
def test_reference_copies_the_pulled_blocks_on_the_lanes_a_read_would_use(
    reference: CopyReference, blocks: int, lanes: int, threads: int
) -> None:
    dst = reference.dst
    dst.zero_()
    runs = pull_runs(POOL_BLOCKS, blocks)
    assert sum(r.length for r in runs) == blocks * bench.BLOCK_BYTES
    figure = reference.copy(runs, lanes)
    # The same split as a NIXL READ of these runs (NixlEndpoint.read): lanes below 8 MiB each
    # are not used.
    assert figure.threads == threads == len(split_runs(runs, lanes, READ_LANE_MIN_BYTES))
    assert lanes_used(runs, lanes) == threads
    assert figure.bytes == blocks * bench.BLOCK_BYTES and figure.seconds > 0
    # The source's pattern, in the last `blocks` blocks of every layer; the rest untouched.
    assert bench._expected_ok(dst, blocks, POOL_BLOCKS - blocks, POOL_BLOCKS)
    assert not dst[:, : POOL_BLOCKS - blocks].any()


def test_reference_refuses_more_lanes_than_it_has_threads(reference: CopyReference) -> None:
    with pytest.raises(ValueError, match="lanes"):
        reference.copy(pull_runs(POOL_BLOCKS, 17), 3)
