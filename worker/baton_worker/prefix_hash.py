"""Block identities for automatic prefix caching (pure).

A full KV block is named by a chained hash: the parent block's hash, the block's token ids and a
salt naming everything else that changes the KV bytes (the model's fingerprint, dtype, block
size, layout). Two sequences that share their first ``k`` full blocks of tokens share their
first ``k`` hashes, so a worker holding those blocks can reuse them instead of computing them.
The partial last block of a sequence is never named: it is still being written.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

HASH_BYTES = 16


def cache_salt(fingerprint: str, dtype: str, block_size: int, layout: str) -> bytes:
    """What, besides the tokens, decides a block's KV bytes."""
    return hashlib.blake2b(
        f"{fingerprint}|{dtype}|{block_size}|{layout}".encode(), digest_size=HASH_BYTES
    ).digest()


def extend_hashes(
    hashes: Sequence[bytes], token_ids: Sequence[int], block_size: int, salt: bytes
) -> list[bytes]:
    """``hashes`` (the chain of the first full blocks of ``token_ids``) extended to every full
    block of ``token_ids``. Pass ``[]`` to start a chain."""
    out = list(hashes)
    full = len(token_ids) // block_size
    parent = out[-1] if out else salt
    for b in range(len(out), full):
        chunk = token_ids[b * block_size : (b + 1) * block_size]
        parent = hashlib.blake2b(
            parent + struct.pack(f"<{block_size}q", *chunk), digest_size=HASH_BYTES
        ).digest()
        out.append(parent)
    return out


def block_hashes(token_ids: Sequence[int], block_size: int, salt: bytes) -> list[bytes]:
    """The chained hash of every full block of ``token_ids``."""
    return extend_hashes([], token_ids, block_size, salt)


def reusable_blocks(num_tokens: int, block_size: int, must_compute_last: bool) -> int:
    """How many leading full blocks of a ``num_tokens`` prefix may come from the cache.

    A prefill must compute at least the last token (its logits give the next token), so a
    prefix that ends on a block boundary keeps its last block out; a pull of finished KV
    (``must_compute_last`` False) may reuse every full block.
    """
    if num_tokens <= 0:
        return 0
    return (num_tokens - 1) // block_size if must_compute_last else num_tokens // block_size
