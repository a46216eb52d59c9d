"""The prefill runner: runs prompts (batch 1 by default), keeps their KV in pool blocks.

``prefill`` is thread-safe and blocking: concurrent callers are batched up to
``max_batch_size`` (leader/follower: whichever caller holds the model runs a batch for everyone
waiting). The blocks of a request stay allocated until ``release`` (the decode side has pulled
them, or the request was cancelled, or its TTL passed — the server decides which).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from baton_worker.engine.kv_pool import KvBlockPool
from baton_worker.engine.loader import LoadedModel
from baton_worker.engine.model import PagedModel
from baton_worker.engine.sampling import Row, prompt_logprobs, random_seed, sample_rows
from baton_worker.engine.types import (
    DuplicateRequestError,
    EngineError,
    EngineRequest,
    PrefillResult,
    SamplingParams,
)

DEFAULT_BLOCK_WAIT_S = 30.0


class PoolExhaustedError(EngineError):
    """No KV blocks became free within the wait; the request was not run (nothing is held)."""

    def __init__(self, request_id: str, blocks: int, waited_s: float) -> None:
        super().__init__(f"request {request_id!r}: no {blocks} free KV blocks within {waited_s:.1f}s")
        self.request_id = request_id


@dataclass
class _Job:
    request_id: str
    tokens: list[int]
    sampling: SamplingParams
    seed: int
    index: int
    prompt_len: int
    blocks: list[int]
    enqueued: float
    start: int = 0  # tokens whose KV came from the prefix cache
    hashes: list[bytes] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    result: PrefillResult | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class PrefillStats:
    waiting: int  # callers waiting for blocks or for the model
    queued_prompt_tokens: int
    held_requests: int
    free_blocks: int
    total_blocks: int


class PrefillRunner:
    """Prefill over ``pool``; see the module docstring for the threading contract."""

    def __init__(
        self, model: LoadedModel, pool: KvBlockPool, max_batch_size: int = 1, prefix_caching: bool = True
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be >= 1, got {max_batch_size}")
        self.model = model
        self.pool = pool
        self.max_batch_size = max_batch_size
        self.prefix_caching = prefix_caching
        self.runner = PagedModel(model, pool)
        self._lock = threading.Lock()  # guards _pending, _held, _reserved
        self._run_lock = threading.Lock()  # one batch on the model at a time
        self._pending: list[_Job] = []
        self._held: dict[str, list[int]] = {}
        self._reserved: set[str] = set()

    def prefill(
        self,
        request_id: str,
        token_ids: list[int] | tuple[int, ...],
        sampling: SamplingParams,
        resume_token_ids: list[int] | tuple[int, ...] = (),
        block_wait_s: float = DEFAULT_BLOCK_WAIT_S,
    ) -> PrefillResult:
        """Run prompt + resume tokens, sample output index ``len(resume_token_ids)``, keep the KV.

        Raises RequestTooLongError / InvalidRequestError / DuplicateRequestError for bad input and
        PoolExhaustedError when no blocks free up within ``block_wait_s``; nothing is held then.
        """
        from baton_worker.engine.decode import validate_request

        req = EngineRequest(request_id, tuple(token_ids), sampling, None, tuple(resume_token_ids))
        validate_request(req, self.model.max_model_len, self.pool, self.model.shape.vocab_size)
        tokens = [*req.prompt_token_ids, *req.resume_token_ids]
        with self._lock:
            if request_id in self._held or request_id in self._reserved:
                raise DuplicateRequestError(request_id)
            self._reserved.add(request_id)
        try:
            t0 = time.monotonic()
            hashes, hit = self._cached_prefix(tokens, sampling)
            need = self.pool.blocks_needed(len(tokens)) - len(hit)
            fresh = self.pool.allocate_blocking(need, block_wait_s, num_tokens=len(tokens))
            if fresh is None:
                self.pool.free(hit)
                raise PoolExhaustedError(request_id, need, time.monotonic() - t0)
            blocks = hit + fresh
            seed = sampling.seed if sampling.seed is not None else random_seed()
            job = _Job(
                request_id,
                tokens,
                sampling,
                seed,
                len(req.resume_token_ids),
                len(req.prompt_token_ids),
                blocks,
                t0,
                len(hit) * self.pool.block_size,
                hashes,
            )
            with self._lock:
                self._pending.append(job)
            self._drive(job)
            if job.error is not None:
                self.pool.free(blocks)
                raise job.error
            with self._lock:
                self._held[request_id] = blocks
            assert job.result is not None
            return job.result
        finally:
            with self._lock:
                self._reserved.discard(request_id)

    def _cached_prefix(self, tokens: list[int], sampling: SamplingParams) -> tuple[list[bytes], list[int]]:
        """The prompt's block hashes and the cached blocks of its longest cached prefix (held)."""
        if not self.prefix_caching:
            return [], []
        if sampling.prompt_logprobs is not None:
            return self.pool.prefix_hashes(tokens), []  # every position's logits are needed
        return self.pool.match_tokens(tokens, must_compute_last=True)

    def _drive(self, job: _Job) -> None:
        # Whoever holds the run lock runs the oldest pending jobs, its own or others'.
        while not job.done.is_set():
            with self._run_lock:
                if job.done.is_set():
                    break
                with self._lock:
                    batch, self._pending = (
                        self._pending[: self.max_batch_size],
                        self._pending[self.max_batch_size :],
                    )
                if batch:
                    self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        try:
            keep = [j.sampling.prompt_logprobs is not None for j in batch]
            logits, full = self.runner.prefill_full(
                [j.tokens for j in batch], [j.blocks for j in batch], keep, [j.start for j in batch]
            )
            for j in batch:
                self.pool.register(j.blocks, j.hashes)
            rows = [
                Row(j.sampling, j.seed, j.index, j.tokens, j.prompt_len, self.model.eos_token_ids)
                for j in batch
            ]
            sampled = sample_rows(logits, rows)
            now = time.monotonic()
            for i, (job, (tok, lp)) in enumerate(zip(batch, sampled, strict=True)):
                prompt_lps = None
                if full and full[i] is not None:
                    prompt_ids = job.tokens[: job.prompt_len]
                    prompt_lps = prompt_logprobs(
                        full[i][: job.prompt_len], prompt_ids, job.sampling.prompt_logprobs
                    )
                job.result = PrefillResult(
                    job.request_id,
                    tok,
                    tuple(job.blocks),
                    len(job.tokens),
                    now - job.enqueued,
                    lp,
                    prompt_lps,
                    job.start,
                )
        except Exception as exc:
            for job in batch:
                job.error = exc
        for job in batch:
            job.done.set()

    def release(self, request_id: str) -> bool:
        """Free a request's blocks; False when they were already released (or never held)."""
        with self._lock:
            blocks = self._held.pop(request_id, None)
        if blocks is None:
            return False
        self.pool.free(blocks)
        return True

    def held_blocks(self, request_id: str) -> tuple[int, ...] | None:
        """The blocks still held for ``request_id`` (None once released)."""
        with self._lock:
            blocks = self._held.get(request_id)
        return tuple(blocks) if blocks is not None else None

    def stats(self) -> PrefillStats:
        usage = self.pool.usage()
        with self._lock:
            pending = list(self._pending)
            held = len(self._held)
        return PrefillStats(
            waiting=len(pending) + usage.waiters,
            queued_prompt_tokens=sum(len(j.tokens) for j in pending) + usage.waiting_tokens,
            held_requests=held,
            free_blocks=usage.free_blocks,
            total_blocks=usage.total_blocks,
        )
