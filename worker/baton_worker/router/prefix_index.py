"""The router's view of each worker's prefix cache (pure).

Every Health poll asks a worker for the block hashes it named or evicted since the last poll
(``HealthResponse.prefix_cache``); :func:`apply_events` folds them into a :class:`PrefixView`.
:func:`cached_tokens` then says how many leading tokens of a prompt a worker holds, which
placement weighs against load. The view may lag by one poll interval or miss a restart until the
next poll: a wrong guess only costs compute (the worker recomputes or re-pulls what it lacks),
never correctness.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from baton_worker.prefix_hash import extend_hashes


@dataclass
class PrefixView:
    """What one worker's prefix cache holds, as of its last Health answer."""

    engine_id: str = ""
    seq: int = 0
    salt: bytes = b""
    block_size: int = 0
    hashes: set[bytes] = field(default_factory=set)


def apply_events(
    view: PrefixView,
    engine_id: str,
    salt: bytes,
    block_size: int,
    seq: int,
    reset: bool,
    stored: Iterable[bytes],
    evicted: Iterable[bytes],
) -> PrefixView:
    """``view`` updated by one answer: a reset (or another engine) replaces what it held."""
    if reset or engine_id != view.engine_id or salt != view.salt or block_size != view.block_size:
        view = PrefixView(engine_id, seq, salt, block_size, set(stored))
    else:
        view.hashes.update(stored)
        view.seq = seq
    view.hashes.difference_update(evicted)
    return view


class PromptHashes:
    """A prompt's block hashes per (salt, block size), computed once per request."""

    def __init__(self, token_ids: Sequence[int]) -> None:
        self.token_ids = token_ids
        self._by_seed: dict[tuple[bytes, int], list[bytes]] = {}

    def of(self, salt: bytes, block_size: int) -> list[bytes]:
        key = (salt, block_size)
        if key not in self._by_seed:
            self._by_seed[key] = extend_hashes([], self.token_ids, block_size, salt)
        return self._by_seed[key]


def cached_tokens(view: PrefixView | None, prompt: PromptHashes) -> int:
    """Leading tokens of the prompt whose KV the worker holds (whole blocks)."""
    if view is None or not view.hashes or view.block_size < 1:
        return 0
    n = 0
    for h in prompt.of(view.salt, view.block_size):
        if h not in view.hashes:
            break
        n += 1
    return n * view.block_size
