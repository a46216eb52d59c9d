"""CUDA graphs for the decode step: one captured graph per (batch bucket, block-table width bucket).

A decode step of a large model at small batch is bound by kernel-launch overhead, not by the GPU;
replaying a captured graph removes that overhead. Inputs are copied into static tensors, padding
rows point at a scratch block reserved from the pool (so they never touch a real sequence's KV),
and every new graph is checked once against the eager forward: on any capture error or mismatch
the engine falls back to eager decoding for good (logged), so graphs can only make it faster.
Set ``BATON_CUDA_GRAPHS=0`` to disable them.
"""

from __future__ import annotations

import logging
import os

import torch

from baton_worker.engine.model import PagedModel

log = logging.getLogger(__name__)

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def _bucket(n: int, buckets: tuple[int, ...]) -> int | None:
    return next((b for b in buckets if b >= n), None)


def _width_bucket(width: int) -> int:
    w = 8
    while w < width:
        w *= 2
    return w


def graphs_enabled(device: torch.device) -> bool:
    """Graphs are used on CUDA unless ``BATON_CUDA_GRAPHS=0``."""
    return device.type == "cuda" and os.environ.get("BATON_CUDA_GRAPHS", "1") != "0"


class GraphedDecode:
    """Wraps :meth:`PagedModel.decode` with captured graphs; same signature and results."""

    def __init__(self, runner: PagedModel, scratch_block: int, max_batch: int) -> None:
        self.runner = runner
        self.scratch = scratch_block
        self.max_batch = max_batch
        self.max_width = runner.pool.blocks_needed(runner.model.max_model_len)
        self.failed = False
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}
        self._pool = None  # memory pool shared by all graphs

    def __call__(
        self, token_ids: torch.Tensor, positions: torch.Tensor, block_table: torch.Tensor
    ) -> torch.Tensor:
        bsz, width = block_table.shape
        b = _bucket(bsz, _BATCH_BUCKETS)
        w = min(_width_bucket(width), max(self.max_width, width))
        if self.failed or b is None:
            return self.runner.decode(token_ids, positions, block_table)
        key = (b, w)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(b, w, token_ids, positions, block_table)
            if entry is None:
                return self.runner.decode(token_ids, positions, block_table)
        graph, io = entry
        self._fill(io, token_ids, positions, block_table)
        graph.replay()
        return io["logits"][:bsz].clone()

    def _fill(self, io: dict[str, torch.Tensor], token_ids, positions, block_table) -> None:
        bsz, width = block_table.shape
        dev = io["tokens"].device
        io["tokens"].zero_()
        io["positions"].zero_()
        io["table"].fill_(self.scratch)
        io["tokens"][:bsz].copy_(token_ids.to(dev, non_blocking=True))
        io["positions"][:bsz].copy_(positions.to(dev, non_blocking=True))
        io["table"][:bsz, :width].copy_(block_table.to(dev, non_blocking=True))

    def _capture(self, b: int, w: int, token_ids, positions, block_table):
        dev = self.runner.device
        io = {
            "tokens": torch.zeros(b, dtype=torch.long, device=dev),
            "positions": torch.zeros(b, dtype=torch.long, device=dev),
            "table": torch.full((b, w), self.scratch, dtype=torch.long, device=dev),
        }
        try:
            # The check: eager on the real inputs first (this step's K/V writes happen here and
            # are rewritten identically by the replay below).
            expected = self.runner.decode(token_ids, positions, block_table)
            self._fill(io, token_ids, positions, block_table)
            stream = torch.cuda.Stream(dev)
            stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside capture (allocator, lazy inits)
                    self.runner.decode(io["tokens"], io["positions"], io["table"])
            torch.cuda.current_stream(dev).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                io["logits"] = self.runner.decode(io["tokens"], io["positions"], io["table"])
            self._pool = graph.pool()
            self._fill(io, token_ids, positions, block_table)
            graph.replay()
            got = io["logits"][: block_table.shape[0]]
            if not torch.equal(got.argmax(-1), expected.argmax(-1)):
                raise RuntimeError("graph replay disagrees with the eager forward")
        except Exception:
            log.exception("CUDA graph capture for batch %d width %d failed; decoding eagerly", b, w)
            self.failed = True
            return None
        self._graphs[(b, w)] = (graph, io)
        log.info("captured decode CUDA graph for batch %d, block width %d", b, w)
        return graph, io
