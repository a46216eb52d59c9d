"""The gRPC fallback data path: KV blocks as a stream of ``KvChunk`` messages.

The prefill side cuts a request's blocks into chunks of consecutive source blocks per layer
(at most ``max_chunk_bytes`` each); the decode side writes each chunk into its own blocks.
Both sides work on the pool tensor viewed as bytes, ``[L, N, 2, H, B, D * itemsize]``, so the
result is byte-identical to a NIXL READ of the same blocks.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from baton_worker.kv.errors import KvTransferError

DEFAULT_CHUNK_BYTES = 4 << 20
# gRPC refuses messages over 4 MiB by default; both sides raise the limit above the chunk size.
GRPC_MESSAGE_LIMIT = 64 << 20
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
    ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
]


def byte_view(storage: torch.Tensor) -> torch.Tensor:
    """The pool tensor as uint8 ``[L, N, 2, H, B, D * itemsize]`` (same memory)."""
    return storage.view(torch.uint8)


@dataclass(frozen=True)
class ChunkSpec:
    """One chunk: ``count`` blocks starting at ``block_index`` of the handle's block list."""

    layer: int
    block_index: int
    count: int


def plan_chunks(
    block_ids: list[int], num_layers: int, bytes_per_block: int, max_chunk_bytes: int
) -> list[ChunkSpec]:
    """Chunks covering every (layer, block): runs of consecutive source blocks, capped in size."""
    cap = max(1, max_chunk_bytes // max(1, bytes_per_block))
    runs: list[tuple[int, int]] = []  # (start index in block_ids, count)
    i = 0
    while i < len(block_ids):
        j = i + 1
        while j < len(block_ids) and j - i < cap and block_ids[j] == block_ids[j - 1] + 1:
            j += 1
        runs.append((i, j - i))
        i = j
    return [ChunkSpec(layer, start, count) for layer in range(num_layers) for start, count in runs]


def chunk_bytes(
    storage_u8: torch.Tensor, block_ids: list[int], spec: ChunkSpec, head_start: int, head_end: int
) -> bytes:
    """The bytes of one chunk: ``[count, 2, heads, B, D*itemsize]`` in layout order."""
    first = block_ids[spec.block_index]
    part = storage_u8[spec.layer, first : first + spec.count, :, head_start:head_end]
    return part.contiguous().cpu().numpy().tobytes()


def iter_chunks(
    storage: torch.Tensor,
    block_ids: list[int],
    head_start: int,
    head_end: int,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[tuple[ChunkSpec, bytes]]:
    """Yield ``(spec, data)`` for every chunk of the request (local heads ``[head_start, head_end)``)."""
    u8 = byte_view(storage)
    per_block = 2 * (head_end - head_start) * u8.shape[4] * u8.shape[5]
    for spec in plan_chunks(block_ids, u8.shape[0], per_block, max_chunk_bytes):
        yield spec, chunk_bytes(u8, block_ids, spec, head_start, head_end)


def write_chunk(
    storage: torch.Tensor,
    dst_blocks: list[int],
    head_start: int,
    head_end: int,
    layer: int,
    block_index: int,
    count: int,
    data: bytes,
) -> int:
    """Write one received chunk into ``dst_blocks[block_index : block_index + count]`` of layer
    ``layer`` (local heads ``[head_start, head_end)``). Returns the bytes written; raises
    KvTransferError naming the field when the chunk does not fit (a corrupt stream)."""
    u8 = byte_view(storage)
    if not 0 <= layer < u8.shape[0]:
        raise KvTransferError(f"KvChunk.layer {layer} outside [0, {u8.shape[0]})")
    if count <= 0 or block_index < 0 or block_index + count > len(dst_blocks):
        raise KvTransferError(
            f"KvChunk.block_index/count {block_index}+{count} outside the {len(dst_blocks)} blocks"
        )
    shape = (count, 2, head_end - head_start, u8.shape[4], u8.shape[5])
    want = count * 2 * (head_end - head_start) * u8.shape[4] * u8.shape[5]
    if len(data) != want:
        raise KvTransferError(f"KvChunk.data has {len(data)} bytes, expected {want}")
    with warnings.catch_warnings():
        # The buffer is only read from; torch warns because bytes are immutable.
        warnings.simplefilter("ignore", UserWarning)
        src = torch.frombuffer(data, dtype=torch.uint8).view(shape)
    targets = dst_blocks[block_index : block_index + count]
    if src.device != u8.device:
        src = src.to(u8.device)
    if targets == list(range(targets[0], targets[0] + count)):
        u8[layer, targets[0] : targets[0] + count, :, head_start:head_end] = src
    else:
        idx = torch.tensor(targets, dtype=torch.long, device=u8.device)
        u8[layer, idx, :, head_start:head_end] = src
    return want
