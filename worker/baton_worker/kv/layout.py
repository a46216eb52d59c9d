"""KV pool geometry and the byte runs a transfer moves (pure functions, no I/O).

A worker rank's KV pool is one contiguous tensor laid out "LNKHBD":
``[num_layers, num_blocks, 2 (K, V), num_kv_heads_local, block_size, head_dim]``.
The bytes of (layer l, block b, K|V s, local heads [h0, h1)) are one contiguous run, and a whole
(layer, block) is one run when all heads are wanted. Transfers are lists of ``(src_offset,
dst_offset, length)`` runs; adjacent runs are merged so NIXL/UCX sees few large descriptors.
"""

from __future__ import annotations

from dataclasses import dataclass

LAYOUT_NAME = "LNKHBD"

DTYPE_ITEMSIZE: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class PoolGeometry:
    """Shape of one rank's KV pool tensor; heads are the rank's local heads."""

    num_layers: int
    num_blocks: int
    num_kv_heads: int
    block_size: int
    head_dim: int
    dtype: str

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_blocks", "num_kv_heads", "block_size", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"PoolGeometry.{name} must be a positive int, got {value!r}")
        if self.dtype not in DTYPE_ITEMSIZE:
            raise ValueError(
                f"PoolGeometry.dtype must be one of {sorted(DTYPE_ITEMSIZE)}, got {self.dtype!r}"
            )

    @property
    def itemsize(self) -> int:
        return DTYPE_ITEMSIZE[self.dtype]

    @property
    def head_bytes(self) -> int:
        """Bytes of one head of one K or V of one block."""
        return self.block_size * self.head_dim * self.itemsize

    @property
    def block_bytes(self) -> int:
        """Bytes of one (layer, block): K and V of all local heads."""
        return 2 * self.num_kv_heads * self.head_bytes

    @property
    def total_bytes(self) -> int:
        return self.num_layers * self.num_blocks * self.block_bytes

    def offset(self, layer: int, block: int, kv: int, head: int) -> int:
        """Byte offset of (layer, block, K|V, local head) from the start of the pool."""
        return (((layer * self.num_blocks + block) * 2 + kv) * self.num_kv_heads + head) * self.head_bytes


@dataclass(frozen=True)
class Run:
    """One contiguous copy: ``length`` bytes from ``src`` offset to ``dst`` offset."""

    src: int
    dst: int
    length: int


def merge_runs(runs: list[Run]) -> list[Run]:
    """Merge runs that continue each other on both sides; keeps the order of ``runs``.

    The result moves exactly the same bytes to the same places with as few runs as possible
    for the given order (runs are produced in source order, so that is the useful order).
    """
    merged: list[Run] = []
    for run in runs:
        if run.length <= 0:
            continue
        if merged:
            last = merged[-1]
            if last.src + last.length == run.src and last.dst + last.length == run.dst:
                merged[-1] = Run(last.src, last.dst, last.length + run.length)
                continue
        merged.append(run)
    return merged


def split_runs(runs: list[Run], lanes: int, min_lane_bytes: int, align: int = 4096) -> list[list[Run]]:
    """Deal ``runs`` out to at most ``lanes`` groups of nearly equal byte counts, for parallel READs.

    Groups are consecutive stretches of ``runs`` (a run is cut where a lane's share ends, at a
    multiple of ``align`` bytes into it), so together they move exactly the bytes of ``runs``.
    Fewer lanes are used when a lane would get less than ``min_lane_bytes``; one group (``runs``
    itself) when a split does not pay. Never returns an empty group.
    """
    if lanes < 1 or min_lane_bytes < 1 or align < 1:
        raise ValueError(f"lanes={lanes}, min_lane_bytes={min_lane_bytes}, align={align}: must be >= 1")
    runs = [r for r in runs if r.length > 0]
    total = sum(r.length for r in runs)
    lanes = max(1, min(lanes, total // min_lane_bytes))
    if lanes == 1:
        return [runs] if runs else []
    share = -(-total // lanes)  # ceil: the last lane gets the remainder
    groups: list[list[Run]] = [[]]
    room = share
    for run in runs:
        while run.length > 0:
            if room <= 0 and len(groups) < lanes:
                groups.append([])
                room = share
            take = run.length
            if len(groups) < lanes and take > room:
                # Cut at an aligned point at or after the lane's share (keep whole pages).
                take = min(run.length, -(-room // align) * align)
            groups[-1].append(Run(run.src, run.dst, take))
            room -= take
            run = Run(run.src + take, run.dst + take, run.length - take)
    return [g for g in groups if g]


def plan_runs(
    src: PoolGeometry,
    src_blocks: list[int],
    src_head_start: int,
    dst: PoolGeometry,
    dst_blocks: list[int],
    dst_head_start: int,
    head_start: int,
    head_end: int,
) -> list[Run]:
    """Byte runs that copy global KV heads ``[head_start, head_end)`` of the given blocks.

    ``src_head_start``/``dst_head_start`` are the first global head held by each side's rank;
    ``src_blocks[i]`` is copied into ``dst_blocks[i]`` for every layer. Raises ValueError,
    naming the field, when the two pools disagree on a dimension or a block id is out of range.
    """
    for name in ("num_layers", "block_size", "head_dim", "dtype"):
        if getattr(src, name) != getattr(dst, name):
            raise ValueError(
                f"KV layout mismatch in {name}: source {getattr(src, name)!r}, "
                f"destination {getattr(dst, name)!r}"
            )
    if len(src_blocks) != len(dst_blocks):
        raise ValueError(f"block_ids: source has {len(src_blocks)} blocks, destination {len(dst_blocks)}")
    for side, geo, blocks in (("source", src, src_blocks), ("destination", dst, dst_blocks)):
        for b in blocks:
            if not 0 <= b < geo.num_blocks:
                raise ValueError(f"block_ids: {side} block {b} outside [0, {geo.num_blocks})")
    src_h0, dst_h0 = head_start - src_head_start, head_start - dst_head_start
    n_heads = head_end - head_start
    if n_heads <= 0 or src_h0 < 0 or dst_h0 < 0:
        raise ValueError(f"head range [{head_start}, {head_end}) not held by both sides")
    if src_h0 + n_heads > src.num_kv_heads or dst_h0 + n_heads > dst.num_kv_heads:
        raise ValueError(f"head range [{head_start}, {head_end}) exceeds a side's local heads")
    pairs = block_pair_runs(src_blocks, dst_blocks)
    if n_heads == src.num_kv_heads == dst.num_kv_heads:
        # Whole (layer, block)s: one run per layer and stretch of consecutive blocks, computed
        # directly (a 4k-token prompt of an 8B model would otherwise be 32k tiny runs in Python).
        # offset(layer, b, 0, 0) == (layer * num_blocks + b) * block_bytes, strides hoisted.
        size = src.block_bytes  # == dst.block_bytes: same heads, head_dim, block size and dtype
        src_layer, dst_layer = src.num_blocks * size, dst.num_blocks * size
        return merge_runs(
            [
                Run(layer * src_layer + sb * size, layer * dst_layer + db * size, count * size)
                for layer in range(src.num_layers)
                for sb, db, count in pairs
            ]
        )
    length = n_heads * src.head_bytes
    runs: list[Run] = []
    for layer in range(src.num_layers):
        for sb0, db0, count in pairs:
            for i in range(count):
                for kv in (0, 1):
                    runs.append(
                        Run(
                            src.offset(layer, sb0 + i, kv, src_h0),
                            dst.offset(layer, db0 + i, kv, dst_h0),
                            length,
                        )
                    )
    return merge_runs(runs)


def block_pair_runs(src_blocks: list[int], dst_blocks: list[int]) -> list[tuple[int, int, int]]:
    """``(src_start, dst_start, count)`` stretches where both block lists advance by one."""
    out: list[tuple[int, int, int]] = []
    for sb, db in zip(src_blocks, dst_blocks, strict=True):
        if out:
            s0, d0, n = out[-1]
            if sb == s0 + n and db == d0 + n:
                out[-1] = (s0, d0, n + 1)
                continue
        out.append((sb, db, 1))
    return out


def blocks_needed(num_tokens: int, block_size: int) -> int:
    """Blocks holding ``num_tokens`` tokens (ceil division); 0 tokens need 0 blocks."""
    if num_tokens < 0 or block_size <= 0:
        raise ValueError(f"num_tokens={num_tokens}, block_size={block_size}: invalid")
    return -(-num_tokens // block_size)
