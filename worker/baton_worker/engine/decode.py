"""The continuous-batching decode engine: ``step() = schedule -> run model -> update``.

Sequences join (after a local prefill, or with KV already pulled into this pool) and leave at step
boundaries; up to ``max_batch_size`` run together. When blocks run out, new requests wait in FIFO
order (counted in :meth:`DecodeEngine.stats`); a running sequence that cannot grow preempts the
most recently admitted one, whose KV is recomputed later (its sampled tokens are kept, so its
output is unchanged).
"""

from __future__ import annotations

import collections
import threading

import torch

from baton_worker.engine.cuda_graphs import GraphedDecode, graphs_enabled
from baton_worker.engine.kv_pool import KvBlockPool
from baton_worker.engine.loader import LoadedModel
from baton_worker.engine.model import PagedModel
from baton_worker.engine.sampling import Row, prompt_logprobs, random_seed, sample_rows
from baton_worker.engine.sequence import OutputCollector, Sequence
from baton_worker.engine.types import (
    DuplicateRequestError,
    EngineRequest,
    EngineStats,
    InvalidRequestError,
    RequestOutput,
    RequestTooLongError,
    TokenLogprob,
)
from baton_worker.text import IncrementalDetokenizer


def validate_request(request: EngineRequest, max_model_len: int, pool: KvBlockPool, vocab_size: int) -> None:
    """Raise a typed error (naming the field) when ``request`` can never run on this engine."""
    n = request.prefix_len
    if n >= max_model_len:
        raise RequestTooLongError(request.request_id, n, max_model_len - 1)
    if pool.blocks_needed(n + 1) > pool.num_blocks:
        raise RequestTooLongError(
            request.request_id, n, pool.num_blocks * pool.block_size - 1, what="KV pool capacity"
        )
    bad = [t for t in (*request.prompt_token_ids, *request.resume_token_ids) if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequestError(
            "prompt_token_ids", f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})"
        )
    pre = request.prefilled
    if pre is not None:
        if pre.num_tokens != n:
            raise InvalidRequestError(
                "prefilled.num_tokens", f"is {pre.num_tokens} but prompt + resume tokens are {n}"
            )
        if len(pre.block_ids) < pool.blocks_needed(n):
            raise InvalidRequestError(
                "prefilled.block_ids", f"{len(pre.block_ids)} blocks cannot hold {n} tokens"
            )
        if not 0 <= pre.first_token < vocab_size:
            raise InvalidRequestError("prefilled.first_token", f"{pre.first_token} is outside the vocabulary")


class DecodeEngine:
    """Runs many requests together over one KV pool. ``add_request``/``abort``/``stats`` are
    thread-safe; ``step`` is meant to be called from one thread (see :class:`EngineLoop`)."""

    def __init__(
        self,
        model: LoadedModel,
        pool: KvBlockPool,
        max_batch_size: int = 64,
        max_prefill_tokens_per_step: int = 4096,
        prefix_caching: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be >= 1, got {max_batch_size}")
        self.model = model
        self.pool = pool
        self.prefix_caching = prefix_caching
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens_per_step = max_prefill_tokens_per_step
        self.runner = PagedModel(model, pool)
        self._graphs: GraphedDecode | None = None
        if graphs_enabled(model.device):
            scratch = pool.allocate(1)  # padding rows of a captured batch write here
            if scratch is not None:
                self._graphs = GraphedDecode(self.runner, scratch[0], max_batch_size)
        self._eos = model.eos_token_ids
        self._max_len = model.max_model_len
        # _inbox_lock guards the inbox, the known ids and pending aborts (cheap, never held
        # across model runs); _step_lock is held for a whole step.
        self._inbox_lock = threading.Lock()
        self._step_lock = threading.Lock()
        self._inbox: collections.deque[EngineRequest] = collections.deque()
        self._known: set[str] = set()
        self._aborted: list[tuple[str, int, int]] = []
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []

    # ---- thread-safe API -------------------------------------------------------------------
    def add_request(self, request: EngineRequest) -> None:
        """Queue a request; it joins the batch at a step boundary. Raises RequestTooLongError,
        DuplicateRequestError or InvalidRequestError (nothing is queued then). With
        ``request.prefilled`` the engine owns those blocks from now on."""
        validate_request(request, self._max_len, self.pool, self.model.shape.vocab_size)
        with self._inbox_lock:
            if request.request_id in self._known:
                raise DuplicateRequestError(request.request_id)
            self._known.add(request.request_id)
            self._inbox.append(request)

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its blocks before returning (waits for a running step to end).
        Its final output (finish_reason "abort") comes out of the next ``step``. False if unknown."""
        with self._inbox_lock:
            if request_id not in self._known:
                return False
            for req in self._inbox:
                if req.request_id == request_id:
                    self._inbox.remove(req)
                    if req.prefilled is not None:
                        self.pool.free(req.prefilled.block_ids)
                    self._known.discard(request_id)
                    self._aborted.append((request_id, len(req.prompt_token_ids), len(req.resume_token_ids)))
                    return True
        with self._step_lock:
            for queue in (self._waiting, self._running):
                for seq in queue:
                    if seq.request_id == request_id:
                        queue.remove(seq)
                        self._release(seq)
                        with self._inbox_lock:
                            self._aborted.append((request_id, seq.num_prompt_tokens, seq.num_outputs))
                        return True
        return False

    def has_work(self) -> bool:
        with self._inbox_lock:
            return bool(self._inbox or self._waiting or self._running or self._aborted)

    def stats(self) -> EngineStats:
        usage = self.pool.usage()
        with self._inbox_lock:
            waiting = list(self._inbox) + [s.request for s in self._waiting]
            running = len(self._running)
        return EngineStats(
            waiting=len(waiting) + usage.waiters,
            running=running,
            free_blocks=usage.free_blocks,
            total_blocks=usage.total_blocks,
            queued_prompt_tokens=sum(r.prefix_len for r in waiting) + usage.waiting_tokens,
            max_batch_size=self.max_batch_size,
        )

    # ---- the step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Admit what fits, run one decode step for the running batch, return what it produced."""
        with self._step_lock:
            collector = OutputCollector()
            with self._inbox_lock:
                aborted, self._aborted = self._aborted, []
                new = list(self._inbox)
                self._inbox.clear()
            for rid, n_prompt, n_out in aborted:
                collector.add_abort(rid, n_prompt, n_out)
            for req in new:
                self._waiting.append(self._new_sequence(req))
            self._admit(collector)
            self._reap()  # finished at their first token: never a preemption victim
            self._grow_or_preempt(collector)
            if self._running:
                self._decode(collector)
            self._reap()
            return collector.outputs()

    def _new_sequence(self, req: EngineRequest) -> Sequence:
        seed = req.sampling.seed if req.sampling.seed is not None else random_seed()
        context = (*req.prompt_token_ids, *req.resume_token_ids)
        detok = IncrementalDetokenizer(self.model.tokenizer, context, req.sampling.stop)
        seq = Sequence(req, seed, detok, tokens=list(context), num_outputs=len(req.resume_token_ids))
        if req.prefilled is not None:
            seq.block_ids = list(req.prefilled.block_ids)
            seq.num_cached = req.prefilled.num_tokens
        return seq

    def _admit(self, collector: OutputCollector) -> None:
        """Move waiting sequences into the batch (FIFO; a head that does not fit blocks the rest,
        so large requests are not starved by small ones)."""
        to_prefill: list[Sequence] = []
        budget = self.max_prefill_tokens_per_step
        while self._waiting and len(self._running) + len(to_prefill) < self.max_batch_size:
            seq = self._waiting[0]
            if seq.num_cached > 0 and not seq.needs_recompute:  # KV already in our blocks
                self._waiting.popleft()
                self._running.append(seq)
                self._remember(seq)
                pre = seq.request.prefilled
                self._emit(seq, pre.first_token, collector, pre.first_logprob, pre.prompt_logprobs)
                continue
            n = len(seq.tokens) if not seq.needs_recompute else len(seq.tokens) - 1
            hit = self._cached_prefix(seq, n)
            if to_prefill and n - len(hit) * self.pool.block_size > budget:
                self.pool.free(hit)
                break
            blocks = self.pool.allocate(self.pool.blocks_needed(n + 1) - len(hit))
            if blocks is None:
                self.pool.free(hit)
                break
            self._waiting.popleft()
            seq.block_ids = hit + blocks
            seq.num_cached = len(hit) * self.pool.block_size  # where its prefill starts
            if not seq.needs_recompute:
                seq.cached_tokens = seq.num_cached
            to_prefill.append(seq)
            budget -= n - seq.num_cached
        if not to_prefill:
            return
        prefixes = [
            s.tokens[: len(s.tokens) - 1] if s.needs_recompute else list(s.tokens) for s in to_prefill
        ]
        # Prompt logprobs only with the first output of a request (never after a preemption).
        keep = [s.request.sampling.prompt_logprobs is not None and not s.needs_recompute for s in to_prefill]
        logits, full = self.runner.prefill_full(
            prefixes, [s.block_ids for s in to_prefill], keep, [s.num_cached for s in to_prefill]
        )
        fresh = [i for i, s in enumerate(to_prefill) if not s.needs_recompute]
        sampled = sample_rows(
            logits[fresh] if fresh else logits[:0], [self._row(to_prefill[i]) for i in fresh]
        )
        for seq, prefix in zip(to_prefill, prefixes, strict=True):
            seq.num_cached = len(prefix)
            self._running.append(seq)
            self._remember(seq)
        for i, (tok, lp) in zip(fresh, sampled, strict=True):
            seq = to_prefill[i]
            prompt_lps = None
            if full and full[i] is not None:
                n = seq.num_prompt_tokens
                prompt_lps = prompt_logprobs(
                    full[i][:n], seq.request.prompt_token_ids, seq.request.sampling.prompt_logprobs
                )
            self._emit(seq, tok, collector, lp, prompt_lps)
        for seq in to_prefill:
            seq.needs_recompute = False

    def _cached_prefix(self, seq: Sequence, n: int) -> list[int]:
        """Held cached blocks of the longest cached prefix of the ``n`` tokens to prefill."""
        if not self.prefix_caching:
            return []
        if seq.request.sampling.prompt_logprobs is not None and not seq.needs_recompute:
            return []  # every prompt position's logits are needed: compute them all
        seq.hashes, hit = self.pool.match_tokens(
            seq.tokens[:n], True, seq.hashes[: n // self.pool.block_size]
        )
        return hit

    def _remember(self, seq: Sequence) -> None:
        """Name the full blocks whose KV is written, so later requests with this prefix reuse them."""
        if not self.prefix_caching or not seq.block_ids:
            return
        full = seq.num_cached // self.pool.block_size
        seq.hashes = self.pool.prefix_hashes(seq.tokens[: full * self.pool.block_size], seq.hashes[:full])
        self.pool.register(seq.block_ids[:full], seq.hashes)

    def _row(self, seq: Sequence) -> Row:
        return Row(
            seq.request.sampling, seq.seed, seq.num_outputs, seq.tokens, seq.num_prompt_tokens, self._eos
        )

    def _emit(
        self,
        seq: Sequence,
        token_id: int,
        collector: OutputCollector,
        logprob: TokenLogprob | None = None,
        prompt_lps: tuple[TokenLogprob | None, ...] | None = None,
    ) -> None:
        text, _ = seq.append(token_id, self._eos, self._max_len)
        collector.add(seq, [token_id], text, [logprob] if logprob is not None else None, prompt_lps)

    def _grow_or_preempt(self, collector: OutputCollector) -> None:
        """Give every running sequence room for its next token, preempting the newest if needed."""
        i = 0
        while i < len(self._running):
            seq = self._running[i]
            if seq.finish_reason is not None:
                i += 1
                continue
            need = self.pool.blocks_needed(seq.num_cached + 1) - len(seq.block_ids)
            if need <= 0:
                i += 1
                continue
            blocks = self.pool.allocate(need)
            if blocks is not None:
                seq.block_ids.extend(blocks)
                i += 1
                continue
            victim = self._running[-1]
            if victim is seq and len(self._running) == 1:
                # Alone and still no room: the pool is too small for this sequence.
                seq.finish_reason = "length"
                collector.add(seq, [], seq.detok.flush())
                i += 1
                continue
            self._running.pop()
            self._remember(victim)  # its recompute may then find most of its KV still cached
            self.pool.free(victim.block_ids)
            victim.block_ids = []
            victim.needs_recompute = True
            self._waiting.appendleft(victim)

    def _decode(self, collector: OutputCollector) -> None:
        batch = [s for s in self._running if s.finish_reason is None]
        if not batch:
            return
        width = max(len(s.block_ids) for s in batch)
        table = torch.zeros((len(batch), width), dtype=torch.long)
        for row, s in enumerate(batch):
            table[row, : len(s.block_ids)] = torch.tensor(s.block_ids, dtype=torch.long)
        tokens = torch.tensor([s.tokens[-1] for s in batch], dtype=torch.long)
        positions = torch.tensor([s.num_cached for s in batch], dtype=torch.long)
        # A runner swapped in after construction (tensor parallelism drives its own) runs eagerly.
        graphed = self._graphs is not None and self._graphs.runner is self.runner
        logits = (self._graphs if graphed else self.runner.decode)(tokens, positions, table)
        sampled = sample_rows(logits, [self._row(s) for s in batch])
        for seq, (tok, lp) in zip(batch, sampled, strict=True):
            seq.num_cached += 1
            self._emit(seq, tok, collector, lp)

    def _reap(self) -> None:
        done = [s for s in self._running if s.finish_reason is not None]
        if not done:
            return
        self._running = [s for s in self._running if s.finish_reason is None]
        for seq in done:
            self._release(seq)

    def _release(self, seq: Sequence) -> None:
        if seq.block_ids:
            self._remember(seq)  # a follow-up turn of this conversation starts with these tokens
            self.pool.free(seq.block_ids)
            seq.block_ids = []
        with self._inbox_lock:
            self._known.discard(seq.request_id)
