"""Typed errors of the KV handoff.

Each error says whether retrying elsewhere can help (``retryable``): a router that gets a
retryable error re-runs prefill on another worker (or prefills locally); a non-retryable one
means the request or the deployment is wrong and retrying cannot fix it.
"""

from __future__ import annotations


class KvError(Exception):
    """Base class of KV handoff errors."""

    retryable: bool = False
    code: str = "kv_error"


class KvHandleError(KvError):
    """A KV handle or agent metadata is malformed, truncated or corrupted (names the field)."""

    code = "kv_handle_invalid"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"invalid KV handle: {field}: {problem}")
        self.field = field
        self.problem = problem


class KvCompatError(KvError):
    """Prefill and decode disagree on model, revision, dtype, layout or protocol version."""

    code = "kv_incompatible"

    def __init__(self, differences: dict[str, tuple[object, object]]) -> None:
        parts = [f"{k}: prefill={a!r} decode={b!r}" for k, (a, b) in sorted(differences.items())]
        super().__init__("KV cache incompatible between prefill and decode: " + "; ".join(parts))
        self.differences = differences


class KvTransferError(KvError):
    """Pulling the bytes failed or ran out of time (peer died, network broke); retry elsewhere."""

    retryable = True
    code = "kv_transfer_failed"


class KvExpiredError(KvError):
    """The prefill side no longer holds the request's blocks (TTL passed, released, restarted)."""

    retryable = True
    code = "kv_expired"


class KvBackendUnavailable(KvError):
    """The requested transfer backend cannot be loaded here (e.g. NIXL not installed)."""

    code = "kv_backend_unavailable"
