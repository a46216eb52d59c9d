"""The Megatron-style sharding of engine/tp.py, in one process: TP ranks run as threads whose
all-reduce is a barrier-synchronised sum, and their paged prefill + decode logits must equal the
unsharded model's (Llama with 8 KV heads; Qwen2 with q/k/v biases and 4 KV heads)."""

from __future__ import annotations

import threading

import pytest
import torch
from baton_worker.engine import KvBlockPool, load_model
from baton_worker.engine.model import PagedModel
from baton_worker.engine.tp import shard_model
from baton_worker.kv.tp_plan import TpConfigError

torch.set_num_threads(1)

PROMPTS = [list(range(5, 42)), [9, 300, 12, 7, 55]]
TABLES = [[0, 1, 2], [3]]


class ThreadSum:
    """An all-reduce for ``n`` threads: every rank gets the same sum, added in rank order."""

    def __init__(self, n: int) -> None:
        self.parts: list[torch.Tensor | None] = [None] * n
        self.barrier = threading.Barrier(n, timeout=60)

    def for_rank(self, rank: int):
        def reduce(t: torch.Tensor) -> None:
            self.parts[rank] = t.clone()
            self.barrier.wait()
            total = sum(self.parts[1:], self.parts[0])
            self.barrier.wait()  # nobody overwrites a part before everyone has summed
            t.copy_(total)

        return reduce


def _run(paged: PagedModel) -> tuple[torch.Tensor, torch.Tensor]:
    logits = paged.prefill(PROMPTS, TABLES)
    tokens = logits.argmax(-1)
    positions = torch.tensor([len(p) for p in PROMPTS])
    table = torch.tensor([[0, 1, 2], [3, 3, 3]])
    return logits, paged.decode(tokens, positions, table)


@pytest.mark.parametrize(
    ("source", "tp"), [("builtin://tiny", 2), ("builtin://tiny-qwen2", 2), ("builtin://tiny", 4)]
)
def test_tp_sharded_forward_equals_unsharded(source: str, tp: int) -> None:
    full = load_model(source)
    want_prefill, want_decode = _run(PagedModel(full, KvBlockPool.for_model(full, num_blocks=8)))

    reducer = ThreadSum(tp)
    results: list[tuple[torch.Tensor, torch.Tensor] | BaseException | None] = [None] * tp
    ranks = []
    for r in range(tp):
        local = shard_model(load_model(source), r, tp, reducer.for_rank(r))
        assert local.shape.num_kv_heads == full.shape.num_kv_heads // tp
        pool = KvBlockPool.for_model(local, num_blocks=8)
        assert pool.storage.shape[3] == full.shape.num_kv_heads // tp  # the rank's KV shard
        ranks.append(PagedModel(local, pool))

    def run(r: int) -> None:
        try:
            results[r] = _run(ranks[r])
        except BaseException as exc:  # reported below; a dead rank breaks the barrier for the rest
            results[r] = exc
            reducer.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(tp)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r, res in enumerate(results):
        assert isinstance(res, tuple), f"rank {r}: {res!r}"
        got_prefill, got_decode = res
        torch.testing.assert_close(got_prefill, want_prefill, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_decode, want_decode, rtol=1e-4, atol=1e-4)
        assert torch.equal(got_decode.argmax(-1), want_decode.argmax(-1))


def test_tp_shard_refuses_a_size_the_model_cannot_split() -> None:
    model = load_model("builtin://tiny-qwen2")  # 4 KV heads
    with pytest.raises(TpConfigError, match="8 does not divide the model's 4 KV heads"):
        shard_model(model, 0, 8)
    with pytest.raises(TpConfigError, match="3 is not one of 1, 2, 4, 8"):
        shard_model(model, 0, 3)
