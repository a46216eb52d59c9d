"""Tensor-parallel KV plans (pure): which KV heads a rank holds, which head ranges of which
prefill ranks a decode rank reads, and whether a (prefill TP, decode TP, KV heads) combination
can work at all.

Every rank of a TP-N worker holds a contiguous, equal share of the KV heads:
rank ``r`` holds global heads ``[r * H / N, (r + 1) * H / N)``. A decode rank of a TP-M worker
holds its own share of the same heads, so it reads, from every prefill rank whose share
overlaps its own, exactly the overlap (one head range per prefill rank, pulled directly from
that rank, never gathered through rank 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TP_SIZES = (1, 2, 4, 8)


class TpConfigError(ValueError):
    """A tensor-parallel setting that cannot work; ``field`` names the setting, the message the numbers."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class HeadRange:
    """Global KV heads ``[start, end)``."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"head range [{self.start}, {self.end}) is empty or negative")

    @property
    def count(self) -> int:
        return self.end - self.start

    def overlap(self, other: HeadRange) -> HeadRange | None:
        """The heads both ranges hold, or None."""
        start, end = max(self.start, other.start), min(self.end, other.end)
        return HeadRange(start, end) if start < end else None


@dataclass(frozen=True)
class ShardPull:
    """Read global heads ``heads`` from prefill rank ``src_rank`` (whose share starts at ``src_start``)."""

    src_rank: int
    src_start: int
    heads: HeadRange


def check_tp_size(
    field: str,
    tp_size: int,
    num_kv_heads: int,
    num_attention_heads: int | None = None,
    intermediate_size: int | None = None,
) -> None:
    """Raise TpConfigError (naming ``field`` and the numbers) unless a TP-``tp_size`` worker can
    shard this model: ``tp_size`` in {1, 2, 4, 8}, dividing the KV heads (each rank holds whole
    KV heads), the attention heads and the MLP width when those are given."""
    if tp_size not in TP_SIZES:
        raise TpConfigError(field, f"{tp_size} is not one of {', '.join(map(str, TP_SIZES))}")
    if num_kv_heads < 1:
        raise TpConfigError("numKvHeads", f"must be >= 1, got {num_kv_heads}")
    if num_kv_heads % tp_size:
        raise TpConfigError(
            field,
            f"{tp_size} does not divide the model's {num_kv_heads} KV heads "
            f"(each rank must hold whole KV heads; use a TP size dividing {num_kv_heads})",
        )
    if num_attention_heads is not None and num_attention_heads % tp_size:
        raise TpConfigError(
            field, f"{tp_size} does not divide the model's {num_attention_heads} attention heads"
        )
    if intermediate_size is not None and intermediate_size % tp_size:
        raise TpConfigError(field, f"{tp_size} does not divide the model's MLP width {intermediate_size}")


def check_tp_pair(
    num_kv_heads: int,
    prefill_tp: int,
    decode_tp: int,
    num_attention_heads: int | None = None,
    intermediate_size: int | None = None,
) -> None:
    """Raise TpConfigError unless prefill TP ``prefill_tp`` can hand its KV to decode TP
    ``decode_tp`` for a model with ``num_kv_heads`` KV heads (both sides must shard it)."""
    check_tp_size(
        "prefill.tensorParallelSize", prefill_tp, num_kv_heads, num_attention_heads, intermediate_size
    )
    check_tp_size(
        "decode.tensorParallelSize", decode_tp, num_kv_heads, num_attention_heads, intermediate_size
    )


def rank_heads(num_kv_heads: int, tp_size: int, rank: int) -> HeadRange:
    """The global KV heads held by ``rank`` of a TP-``tp_size`` worker (contiguous, equal shares)."""
    if num_kv_heads % tp_size:
        raise TpConfigError("tensorParallelSize", f"{tp_size} does not divide {num_kv_heads} KV heads")
    if not 0 <= rank < tp_size:
        raise ValueError(f"rank: {rank} outside [0, {tp_size})")
    per = num_kv_heads // tp_size
    return HeadRange(rank * per, (rank + 1) * per)


def plan_rank_pulls(shards: Sequence[tuple[int, int, int]], wanted: HeadRange) -> list[ShardPull]:
    """The reads that fill ``wanted`` from prefill shards given as ``(rank, head_start, head_end)``.

    Raises ValueError when the shards leave some wanted head uncovered or overlap each other
    (a malformed handle); otherwise the returned ranges cover ``wanted`` exactly once, in head order.
    """
    pulls: list[ShardPull] = []
    covered = wanted.start
    for rank, start, end in sorted(shards, key=lambda s: s[1]):
        part = HeadRange(start, end).overlap(wanted)
        if part is None:
            continue
        if part.start != covered:
            raise ValueError(
                f"shards: KV heads [{covered}, {part.start}) of [{wanted.start}, {wanted.end}) "
                f"are held by no prefill rank, or ranks overlap at head {part.start}"
            )
        pulls.append(ShardPull(rank, start, part))
        covered = part.end
    if covered != wanted.end:
        raise ValueError(
            f"shards: KV heads [{covered}, {wanted.end}) of [{wanted.start}, {wanted.end}) "
            "are held by no prefill rank"
        )
    return pulls


def plan_pulls(num_kv_heads: int, prefill_tp: int, decode_tp: int) -> dict[int, list[ShardPull]]:
    """For every decode rank, the reads it makes from a TP-``prefill_tp`` prefill worker.

    Raises TpConfigError (naming the numbers) for a combination that cannot work."""
    check_tp_pair(num_kv_heads, prefill_tp, decode_tp)
    shards = [
        (r, h.start, h.end)
        for r, h in ((r, rank_heads(num_kv_heads, prefill_tp, r)) for r in range(prefill_tp))
    ]
    return {d: plan_rank_pulls(shards, rank_heads(num_kv_heads, decode_tp, d)) for d in range(decode_tp)}
