"""The prefill side's book of KV blocks held for decode workers.

A request's blocks stay held until the first of: the decode side's NIXL notification, a
``Release``, a ``Cancel``, or the TTL. Every path ends in the same ``release``, which hands the
blocks to ``free`` exactly once, so an abandoned request never strands memory and a late
second release is harmless (it returns False).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Held:
    request_id: str
    block_ids: tuple[int, ...]
    expires_unix_ms: int


class HeldBlocks:
    """Thread-safe map request id -> held blocks; ``free(request_id, block_ids)`` is called
    outside the lock, exactly once per held request."""

    def __init__(self, free: Callable[[str, list[int]], None]) -> None:
        self._free = free
        self._held: dict[str, Held] = {}
        self._lock = threading.Lock()

    def hold(self, request_id: str, block_ids: list[int], expires_unix_ms: int) -> None:
        """Record blocks held for ``request_id``; a duplicate id is refused (ValueError)."""
        with self._lock:
            if request_id in self._held:
                raise ValueError(f"request_id {request_id!r} already holds KV blocks")
            self._held[request_id] = Held(request_id, tuple(block_ids), expires_unix_ms)

    def get(self, request_id: str) -> Held | None:
        with self._lock:
            return self._held.get(request_id)

    def release(self, request_id: str) -> bool:
        """Free the request's blocks; False when nothing was held (already freed or unknown)."""
        with self._lock:
            held = self._held.pop(request_id, None)
        if held is None:
            return False
        self._free(request_id, list(held.block_ids))
        return True

    def expire(self, now_unix_ms: int) -> list[str]:
        """Free every request whose TTL has passed at ``now_unix_ms``; returns their ids."""
        with self._lock:
            due = [rid for rid, h in self._held.items() if h.expires_unix_ms <= now_unix_ms]
        return [rid for rid in due if self.release(rid)]

    def held_blocks(self) -> int:
        with self._lock:
            return sum(len(h.block_ids) for h in self._held.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def release_all(self) -> int:
        """Free everything (shutdown); returns how many requests were freed."""
        with self._lock:
            ids = list(self._held)
        return sum(1 for rid in ids if self.release(rid))


DONE_PREFIX = b"baton-kv-done:"


def done_message(request_id: str) -> bytes:
    """The NIXL notification a decode worker posts after reading a request's blocks."""
    return DONE_PREFIX + request_id.encode()


def parse_done(message: bytes) -> str | None:
    """Request id of a done notification, None for anything else."""
    if not message.startswith(DONE_PREFIX):
        return None
    try:
        return message[len(DONE_PREFIX) :].decode()
    except UnicodeDecodeError:
        return None
