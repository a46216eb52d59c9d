"""The paged KV block pool: one contiguous tensor, allocated once, handed out in fixed-size blocks.

Layout "LNKHBD": ``storage[num_layers, num_blocks, 2 (K, V), num_kv_heads, block_size, head_dim]``.
Token ``t`` of a sequence lives in ``block_ids[t // block_size]``, slot ``t % block_size``. One
(layer, block, K|V, head range) is a contiguous run of bytes, so the KV transfer registers the
whole tensor once and reads exactly the runs it needs (see docs/internals.md).

Prefix caching: blocks are reference-counted. A full block can be named by its chained hash
(:mod:`baton_worker.prefix_hash`) with :meth:`KvBlockPool.register`; when its last holder
frees it, it stays cached, evictable, and :meth:`KvBlockPool.match_prefix` hands it to the next
request with the same prefix. Evictable blocks count as free: an allocation that finds no free
block evicts the least recently used cached one, so caching never refuses or delays a request.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from baton_worker.prefix_hash import cache_salt, extend_hashes, reusable_blocks

LAYOUT = "LNKHBD"
DEFAULT_BLOCK_SIZE = 16

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map "float32" | "bfloat16" | "float16" (or a torch dtype) to a torch dtype; ValueError otherwise."""
    if isinstance(name, torch.dtype):
        if name not in _DTYPES.values():
            raise ValueError(f"dtype: unsupported {name}; expected one of {', '.join(_DTYPES)}")
        return name
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype: unsupported {name!r}; expected one of {', '.join(_DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The inverse of :func:`torch_dtype`."""
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"dtype: unsupported {dtype}")


@dataclass(frozen=True)
class PoolUsage:
    free_blocks: int  # free or cached-and-evictable
    total_blocks: int
    waiters: int  # callers blocked in allocate_blocking
    waiting_tokens: int  # tokens those callers want room for
    cached_blocks: int = 0  # blocks named by a prefix hash (held or evictable)


MAX_EVENT_LOG = 100_000  # hashes whose last change is remembered for routers that poll


@dataclass(frozen=True)
class PrefixEvents:
    """What changed in the prefix cache after sequence number ``after`` (see
    :meth:`KvBlockPool.prefix_events`): the net effect per block hash, or, with ``reset``, every
    hash cached now (the caller's view was too old or from another engine)."""

    seq: int
    reset: bool
    stored: tuple[bytes, ...]
    evicted: tuple[bytes, ...]


@dataclass(frozen=True)
class PrefixCacheStats:
    """Counters since the pool was made (tokens are whole blocks)."""

    queried_tokens: int
    hit_tokens: int
    evicted_blocks: int
    cached_blocks: int


class KvBlockPool:
    """A fixed pool of KV blocks over one preallocated tensor. ``allocate``/``free`` are thread-safe.

    Give either ``num_blocks`` or ``memory_bytes`` (the pool takes as many blocks as fit).
    """

    def __init__(
        self,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
        block_size: int = DEFAULT_BLOCK_SIZE,
        num_blocks: int | None = None,
        memory_bytes: int | None = None,
        fingerprint: str = "",
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size: must be >= 1, got {block_size}")
        for name, value in (
            ("num_layers", num_layers),
            ("num_kv_heads", num_kv_heads),
            ("head_dim", head_dim),
        ):
            if value < 1:
                raise ValueError(f"{name}: must be >= 1, got {value}")
        self.dtype = torch_dtype(dtype)
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.block_size = block_size
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        self.bytes_per_block = num_layers * 2 * num_kv_heads * block_size * head_dim * itemsize
        if (num_blocks is None) == (memory_bytes is None):
            raise ValueError("num_blocks/memory_bytes: give exactly one of them")
        if num_blocks is None:
            num_blocks = int(memory_bytes) // self.bytes_per_block
        if num_blocks < 1:
            raise ValueError(
                f"memory_bytes: {memory_bytes} bytes hold no block of {self.bytes_per_block} bytes"
                if memory_bytes is not None
                else f"num_blocks: must be >= 1, got {num_blocks}"
            )
        self.num_blocks = num_blocks
        # Names the weights in prefix hashes: blocks of two models never share a name.
        self.cache_salt = cache_salt(fingerprint, dtype_name(self.dtype), block_size, LAYOUT)
        # zeros, not empty: a block read before it was written must not hold NaNs from old memory.
        self.storage = torch.zeros(
            (num_layers, num_blocks, 2, num_kv_heads, block_size, head_dim), dtype=self.dtype, device=device
        )
        self._cond = threading.Condition()
        # Lowest ids are handed out first (a stack popped from the end).
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._refs = [0] * num_blocks
        self._waiters = 0
        self._waiting_tokens = 0
        # Prefix cache: block <-> hash for named blocks; the named blocks nobody holds, oldest first.
        self._hash_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        self._evictable: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._queried_tokens = 0
        self._hit_tokens = 0
        self._evicted = 0
        # The sequence number of each hash's last change (named or evicted), oldest first; what
        # falls off the end moves the floor below which a reader must start over.
        self._event_seq = 0
        self._event_floor = 0
        self._changed: collections.OrderedDict[bytes, int] = collections.OrderedDict()

    @classmethod
    def for_model(
        cls,
        model: Any,
        *,
        num_blocks: int | None = None,
        memory_bytes: int | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> KvBlockPool:
        """A pool shaped for ``model`` (a LoadedModel: its layers, KV heads, head dim, dtype, device)."""
        shape = model.shape
        return cls(
            num_layers=shape.num_layers,
            num_kv_heads=shape.num_kv_heads,
            head_dim=shape.head_dim,
            dtype=model.dtype,
            device=model.device,
            block_size=block_size,
            num_blocks=num_blocks,
            memory_bytes=memory_bytes,
            fingerprint=model.fingerprint,
        )

    @property
    def device(self) -> torch.device:
        return self.storage.device

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take now: free ones plus cached ones nobody holds."""
        with self._cond:
            return len(self._free) + len(self._evictable)

    def blocks_needed(self, num_tokens: int) -> int:
        """Blocks that hold ``num_tokens`` tokens."""
        return -(-max(0, num_tokens) // self.block_size)

    def allocate(self, n: int) -> list[int] | None:
        """Take ``n`` blocks, all or none: returns their ids, or None when fewer than ``n`` are free."""
        if n < 0:
            raise ValueError(f"n: must be >= 0, got {n}")
        with self._cond:
            return self._take(n)

    def _take(self, n: int) -> list[int] | None:
        if n > len(self._free) + len(self._evictable):
            return None
        ids = [self._free.pop() for _ in range(min(n, len(self._free)))]
        while len(ids) < n:
            # The least recently used cached block loses its name and is reused.
            b, _ = self._evictable.popitem(last=False)
            h = self._hash_of.pop(b)
            del self._block_of[h]
            self._evicted += 1
            self._note_change(h)
            ids.append(b)
        for b in ids:
            self._refs[b] = 1
        return ids

    def allocate_blocking(self, n: int, timeout: float, num_tokens: int = 0) -> list[int] | None:
        """Like :meth:`allocate` but waits up to ``timeout`` seconds for blocks to be freed.

        While waiting, the caller counts in :meth:`usage` (``waiters``, ``waiting_tokens``), which is
        how a decode worker's queue shows requests waiting for KV memory. Returns None on timeout;
        raises ValueError at once when ``n`` exceeds the whole pool (it could never succeed).
        """
        if n > self.num_blocks:
            raise ValueError(f"n: {n} blocks requested but the pool only has {self.num_blocks}")
        deadline = time.monotonic() + timeout
        with self._cond:
            ids = self._take(n)
            if ids is not None:
                return ids
            self._waiters += 1
            self._waiting_tokens += num_tokens
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._cond.wait(remaining)
                    ids = self._take(n)
                    if ids is not None:
                        return ids
            finally:
                self._waiters -= 1
                self._waiting_tokens -= num_tokens

    def free(self, block_ids: list[int] | tuple[int, ...]) -> None:
        """Drop one reference to each block; a block nobody holds goes back to the pool (or,
        named by a prefix hash, stays cached and evictable). Freeing a block not held, or the
        same block twice in one call, raises ValueError and frees nothing: it means two owners
        believed they held the same reference."""
        with self._cond:
            seen: set[int] = set()
            for b in block_ids:
                if not 0 <= b < self.num_blocks or not self._refs[b] or b in seen:
                    raise ValueError(f"block_ids: block {b} is not allocated (double free?)")
                seen.add(b)
            for b in block_ids:
                self._refs[b] -= 1
                if self._refs[b]:
                    continue
                if b in self._hash_of:
                    self._evictable[b] = None
                else:
                    self._free.append(b)
            if block_ids:
                self._cond.notify_all()

    # ---- prefix cache --------------------------------------------------------------------------
    def match_prefix(self, hashes: Sequence[bytes]) -> list[int]:
        """Take a reference to the cached blocks of the longest cached prefix of ``hashes``
        (one hash per full block, in order); the caller frees them like allocated blocks."""
        with self._cond:
            found: list[int] = []
            for h in hashes:
                b = self._block_of.get(h)
                if b is None:
                    break
                found.append(b)
            for b in found:
                self._refs[b] += 1
                self._evictable.pop(b, None)
            self._queried_tokens += len(hashes) * self.block_size
            self._hit_tokens += len(found) * self.block_size
            return found

    def register(self, block_ids: Sequence[int], hashes: Sequence[bytes]) -> int:
        """Name held, fully written blocks by their prefix hashes so later requests can reuse
        them. A hash already naming another block, or a block already named, is left as it is.
        Returns how many blocks were newly named."""
        named = 0
        with self._cond:
            for b, h in zip(block_ids, hashes, strict=False):
                if not self._refs[b]:
                    raise ValueError(f"block_ids: block {b} is not allocated")
                if h in self._block_of or b in self._hash_of:
                    continue
                self._block_of[h] = b
                self._hash_of[b] = h
                self._note_change(h)
                named += 1
        return named

    def _note_change(self, h: bytes) -> None:
        self._event_seq += 1
        self._changed[h] = self._event_seq
        self._changed.move_to_end(h)
        if len(self._changed) > MAX_EVENT_LOG:
            _, seq = self._changed.popitem(last=False)
            self._event_floor = seq

    def prefix_events(self, after: int) -> PrefixEvents:
        """The hashes named or evicted since sequence number ``after`` (what a router polling
        this worker needs to keep its view of the cache exact). ``after`` beyond the current
        number (another engine's) or older than the remembered log gives a full listing."""
        with self._cond:
            if after > self._event_seq or after < self._event_floor:
                return PrefixEvents(self._event_seq, True, tuple(self._block_of), ())
            stored: list[bytes] = []
            evicted: list[bytes] = []
            for h, seq in reversed(self._changed.items()):
                if seq <= after:
                    break
                (stored if h in self._block_of else evicted).append(h)
            return PrefixEvents(self._event_seq, False, tuple(stored), tuple(evicted))

    def match_tokens(
        self,
        token_ids: Sequence[int],
        must_compute_last: bool,
        known: Sequence[bytes] = (),
        limit: int | None = None,
    ) -> tuple[list[bytes], list[int]]:
        """The hashes of every full block of ``token_ids`` (``known``: the first ones), and a
        reference to the cached blocks of its longest reusable prefix (at most ``limit`` blocks;
        see :func:`reusable_blocks` for ``must_compute_last``)."""
        hashes = self.prefix_hashes(token_ids, known)
        reuse = reusable_blocks(len(token_ids), self.block_size, must_compute_last)
        return hashes, self.match_prefix(hashes[: reuse if limit is None else min(reuse, limit)])

    def prefix_hashes(self, token_ids: Sequence[int], known: Sequence[bytes] = ()) -> list[bytes]:
        """The chained hashes of every full block of ``token_ids`` (``known``: the first ones)."""
        return extend_hashes(known, token_ids, self.block_size, self.cache_salt)

    def prefix_stats(self) -> PrefixCacheStats:
        with self._cond:
            return PrefixCacheStats(self._queried_tokens, self._hit_tokens, self._evicted, len(self._hash_of))

    def leaked_blocks(self) -> list[int]:
        """Blocks still held by someone (for tests: empty once every request is done)."""
        with self._cond:
            return [b for b, r in enumerate(self._refs) if r]

    def usage(self) -> PoolUsage:
        with self._cond:
            return PoolUsage(
                len(self._free) + len(self._evictable),
                self.num_blocks,
                self._waiters,
                self._waiting_tokens,
                len(self._hash_of),
            )

    def block_view(self, layer: int, block_id: int) -> torch.Tensor:
        """The ``[2, num_kv_heads, block_size, head_dim]`` view of one (layer, block)."""
        return self.storage[layer, block_id]
