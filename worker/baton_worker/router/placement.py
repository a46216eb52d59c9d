"""Where a request runs (pure): which prefill worker, which decode worker, and whether to
disaggregate at all.

Inputs are snapshots (:class:`WorkerLoad`) merging what a worker last reported on Health with
what this router has in flight there right now (reports are up to one poll interval old; the
router's own counts are exact for its own traffic, so the larger of the two is used).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass

# Reasons of a prefill-placement decision (the `reason` label of baton_prefill_placement_total).
DISAGGREGATED = "disaggregated"
SHORT_PROMPT = "short_prompt"
PREFILL_SATURATED = "prefill_saturated"
NO_PREFILL_WORKER = "no_prefill_worker"
KV_INCOMPATIBLE = "kv_incompatible"  # healthy prefill workers exist, none whose KV the decode worker can use
# Why a worker was chosen (the `reason` label of baton_router_prefix_placement_total).
PREFIX_HIT = "prefix_hit"  # it holds part of the prompt in its prefix cache
LOAD = "load"  # nobody holds any: load alone decided


@dataclass(frozen=True)
class WorkerLoad:
    """What placement knows about one worker."""

    address: str
    healthy: bool = True
    queue_depth: int = 0  # reported: requests waiting, not yet running
    queued_prompt_tokens: int = 0  # reported
    running: int = 0  # reported
    free_blocks: int = 0  # reported
    total_blocks: int = 0  # reported
    max_batch_size: int = 1  # reported
    inflight: int = 0  # this router's requests there now
    inflight_prompt_tokens: int = 0  # this router's prompt tokens waiting there (prefill)
    kv_compat: str = ""  # reported KV compatibility hash ("" = unknown: an older worker)
    cached_tokens: int = 0  # leading tokens of this request's prompt in its prefix cache

    @property
    def pending_tokens(self) -> int:
        return max(self.queued_prompt_tokens, self.inflight_prompt_tokens)

    @property
    def load(self) -> float:
        """Requests there per batch slot (1.0 = batch full; above = requests wait)."""
        return max(self.running + self.queue_depth, self.inflight) / max(1, self.max_batch_size)

    @property
    def free_fraction(self) -> float:
        return self.free_blocks / self.total_blocks if self.total_blocks else 0.0


@dataclass(frozen=True)
class DisaggConfig:
    """Thresholds of conditional disaggregation."""

    # Prompts (including resumed tokens) of at most this many tokens prefill on the decode worker:
    # the KV handoff would cost more than the prefill itself.
    local_prefill_max_tokens: int = 8
    # A prefill worker with at least this many prompt tokens pending is saturated; when all are,
    # the decode worker prefills locally rather than queue behind them.
    prefill_saturation_tokens: int = 16384
    # KV-aware placement: how much a cached prompt prefix counts against load. Prefill: each
    # cached token is this many tokens less work (1.0: exactly the work saved). Decode: the
    # cached fraction of the prompt is weighed against load (requests per batch slot) times
    # this. 0 places on load alone.
    prefix_weight: float = 1.0


@dataclass(frozen=True)
class PrefillDecision:
    remote: bool
    reason: str
    worker: str | None = None  # the prefill worker when remote


def _candidates(workers: Sequence[WorkerLoad], exclude: Collection[str]) -> list[WorkerLoad]:
    return [w for w in workers if w.healthy and w.address not in exclude]


def choose_prefill(
    workers: Sequence[WorkerLoad],
    exclude: Collection[str] = (),
    prompt_tokens: int = 0,
    prefix_weight: float = 0.0,
) -> WorkerLoad | None:
    """The healthy prefill worker that finishes this prompt first: the fewest pending prompt
    tokens plus the prompt's tokens it would compute (those past its cached prefix, counted
    ``prefix_weight`` per token). None when there is none.

    Ties go to fewer in-flight requests, then to the address, so the choice is deterministic.
    """
    pool = _candidates(workers, exclude)
    if not pool:
        return None
    return min(
        pool,
        key=lambda w: (
            w.pending_tokens + prompt_tokens - prefix_weight * min(w.cached_tokens, prompt_tokens),
            w.inflight,
            w.address,
        ),
    )


def choose_decode(
    workers: Sequence[WorkerLoad],
    exclude: Collection[str] = (),
    prefill_workers: Sequence[WorkerLoad] = (),
    prompt_tokens: int = 0,
    prefix_weight: float = 0.0,
) -> WorkerLoad | None:
    """The healthy decode worker with the most free KV memory relative to its load.

    Score: free fraction of KV blocks minus load (requests per batch slot); a worker whose
    batch is full ranks below any that still has a free slot. Next comes whether a healthy
    prefill worker of ``prefill_workers`` can hand it KV (:func:`kv_compatible`): during a
    rolling update of the model, a decode worker whose generation has no prefill worker left
    would prefill every prompt itself. With ``prefix_weight``, the fraction of the prompt it
    holds cached (KV it need not pull or compute) counts against load.
    """
    pool = _candidates(workers, exclude)
    if not pool:
        return None
    prefill = [p for p in prefill_workers if p.healthy]
    if prefill:
        lonely = {w.address for w in pool if not any(kv_compatible(p, w.kv_compat) for p in prefill)}
    else:
        lonely = set()  # nobody can disaggregate now: compatibility decides nothing

    def hit(w: WorkerLoad) -> float:
        return prefix_weight * min(w.cached_tokens, prompt_tokens) / prompt_tokens if prompt_tokens else 0.0

    return min(
        pool,
        key=lambda w: (
            w.load >= 1.0,
            w.address in lonely,
            w.load - w.free_fraction - hit(w),
            w.inflight,
            w.address,
        ),
    )


def kv_compatible(prefill: WorkerLoad, decode_compat: str) -> bool:
    """Whether the decode worker (of KV hash ``decode_compat``) can use this prefill worker's KV.
    An unknown hash on either side (a worker that predates it) counts as compatible: the decode
    worker's own check of the handle still refuses a mismatch, and the router retries."""
    return not prefill.kv_compat or not decode_compat or prefill.kv_compat == decode_compat


def layout_differences(prefill_fields: str, decode_fields: str) -> str:
    """What differs between two workers' KV layouts (``HealthResponse.kv_compat_fields``, JSON),
    as ``name: prefill value != decode value, ...``; "" when either is unknown or unreadable."""
    try:
        theirs, ours = json.loads(prefill_fields), json.loads(decode_fields)
    except ValueError:
        return ""
    if not isinstance(theirs, dict) or not isinstance(ours, dict):
        return ""
    names = sorted(set(theirs) | set(ours))
    return ", ".join(
        f"{n}: {theirs.get(n)!r} != {ours.get(n)!r}" for n in names if theirs.get(n) != ours.get(n)
    )


def decide_prefill(
    prompt_tokens: int,
    prefill_workers: Sequence[WorkerLoad],
    cfg: DisaggConfig,
    exclude: Collection[str] = (),
    decode_compat: str = "",
) -> PrefillDecision:
    """Prefill remotely (on the chosen prefill worker) or locally on the decode worker, and why.

    Only prefill workers whose KV the decode worker can use are candidates (during a rolling
    update of the model, new prefill workers pair with new decode workers, old with old)."""
    if prompt_tokens <= cfg.local_prefill_max_tokens:
        return PrefillDecision(False, SHORT_PROMPT)
    usable = [w for w in prefill_workers if kv_compatible(w, decode_compat)]
    best = choose_prefill(usable, exclude, prompt_tokens, cfg.prefix_weight)
    if best is None:
        if choose_prefill(prefill_workers, exclude) is not None:
            return PrefillDecision(False, KV_INCOMPATIBLE)
        return PrefillDecision(False, NO_PREFILL_WORKER)
    if best.pending_tokens >= cfg.prefill_saturation_tokens:
        return PrefillDecision(False, PREFILL_SATURATED)
    return PrefillDecision(True, DISAGGREGATED, best.address)
