"""The reference of `baton bench kv`: the bytes a NIXL READ moves, copied within this process.

The decode side's NIXL READ of a handle copies the byte runs :func:`plan_runs` gives (one per
layer and stretch of consecutive blocks), deals them out to the endpoint's read lanes with
:func:`split_runs` and runs the parts in parallel threads (:class:`NixlEndpoint`). The reference
copies the same runs into the same destination pool, from an in-process pool of the source's
shape and pattern, dealt out the same way to as many threads: ``memcpy`` (``ctypes.memmove``,
which releases the GIL) on host memory, one CUDA stream per thread on a GPU. So ``nixl / memcpy``
compares the transport with a plain copy doing the same work with the same parallelism; the
same runs copied by one thread are reported beside it.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from concurrent import futures
from dataclasses import dataclass

import torch
from baton_worker.kv.layout import PoolGeometry, Run, plan_runs, split_runs
from baton_worker.kv.nixl_agent import READ_LANE_MIN_BYTES

from baton_dev.bench.kv_source import BLOCK, HEAD_DIM, HEADS, LAYERS, fill_pattern


@dataclass(frozen=True)
class CopyFigure:
    """One reference copy: bytes moved, seconds, and how many threads moved them."""

    bytes: int
    seconds: float
    threads: int


def _geometry(num_blocks: int) -> PoolGeometry:
    return PoolGeometry(
        num_layers=LAYERS,
        num_blocks=num_blocks,
        num_kv_heads=HEADS,
        block_size=BLOCK,
        head_dim=HEAD_DIM,
        dtype="bfloat16",
    )


def pull_runs(pool_blocks: int, num_blocks: int) -> list[Run]:
    """The runs of the bench's pull of source blocks ``[0, n)`` into the last ``n`` blocks of a
    pool of ``pool_blocks`` (both pools have the same shape), planned as :class:`KvSink` plans
    a NIXL READ."""
    geometry = _geometry(pool_blocks)
    dst_blocks = list(range(pool_blocks - num_blocks, pool_blocks))
    return plan_runs(geometry, list(range(num_blocks)), 0, geometry, dst_blocks, 0, 0, HEADS)


def lanes_used(runs: list[Run], lanes: int) -> int:
    """How many lanes a READ of ``runs`` runs on with ``lanes`` lanes (as :class:`NixlEndpoint` splits it)."""
    return len(split_runs(runs, lanes, READ_LANE_MIN_BYTES))


class CopyReference:
    """Copies what a pull of ``n`` source blocks moves, between two pools of the bench's shape.

    ``dst`` is the decode side's pool (the bench's own: the same destination bytes NIXL writes);
    the source is a pool of ``dst``'s shape in this process, filled with the source process's
    pattern, so the bench's byte check applies to the copy as well.
    """

    def __init__(self, dst: torch.Tensor, lanes: int) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        self.dst = dst
        self.lanes = lanes
        self.src = torch.empty_like(dst)
        fill_pattern(self.src)
        self.cuda = dst.device.type == "cuda"
        self._src_bytes = self.src.view(-1).view(torch.uint8)
        self._dst_bytes = dst.view(-1).view(torch.uint8)
        self._streams = [torch.cuda.Stream(dst.device) for _ in range(lanes)] if self.cuda else []
        self._pool = (
            futures.ThreadPoolExecutor(max_workers=lanes - 1, thread_name_prefix="kv-bench-copy")
            if lanes > 1
            else None
        )

    def copy(self, runs: list[Run], lanes: int) -> CopyFigure:
        """Copy ``runs`` on at most ``lanes`` threads (split as a NIXL READ is split), timed."""
        if lanes > self.lanes:
            raise ValueError(f"{lanes} lanes asked of a reference built for {self.lanes}")
        if self.cuda:
            torch.cuda.synchronize(self.dst.device)  # the caller's zeroing of dst is done, and untimed
        t0 = time.perf_counter()
        groups = split_runs(runs, lanes, READ_LANE_MIN_BYTES)
        if len(groups) == 1:
            moved = self._copy_group(0, groups[0])
        else:
            assert self._pool is not None
            parts = [self._pool.submit(self._copy_group, i, g) for i, g in enumerate(groups[1:], start=1)]
            moved = self._copy_group(0, groups[0]) + sum(p.result() for p in parts)
        return CopyFigure(moved, time.perf_counter() - t0, len(groups))

    def _copy_group(self, lane: int, group: list[Run]) -> int:
        if self.cuda:
            stream = self._streams[lane]
            with torch.cuda.stream(stream):  # one stream per thread, as one thread per lane on the host
                for r in group:
                    self._dst_bytes[r.dst : r.dst + r.length].copy_(self._src_bytes[r.src : r.src + r.length])
            stream.synchronize()
        else:
            src, dst = self.src.data_ptr(), self.dst.data_ptr()
            for r in group:
                ctypes.memmove(dst + r.dst, src + r.src, r.length)
        return sum(r.length for r in group)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def summary(figures: list[CopyFigure]) -> dict[str, float]:
    """Median and best GB/s and the median seconds of a list of copies."""
    rates = [f.bytes / f.seconds / 1e9 for f in figures]
    return {
        "gbps": round(statistics.median(rates), 3),
        "gbps_best": round(max(rates), 3),
        "seconds": round(statistics.median(f.seconds for f in figures), 6),
    }
