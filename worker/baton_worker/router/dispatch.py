"""Running one request over the worker pools, with retries and mid-stream failover.

The loop: pick a decode worker; decide remote or local prefill; on remote, call Prefill and
hand its first token to the caller at once (that is the time to first token); then stream
Generate from the decode worker. Any worker failure is retried on another worker, resuming
from the output tokens already produced (``resume_token_ids``): sampling of output index i
depends only on (seed, i), so the continuation is the same tokens a healthy run would give.
The decisions (what failed, what to skip) are pure functions at the top of this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc

from baton_worker.rpc import pb2

from .decode_stream import Progress, WorkerDown, cancel_when_down, chunk_progress, next_chunk
from .errors import bad_param, internal, unavailable
from .metrics import RouterMetrics
from .placement import (
    KV_INCOMPATIBLE,
    DisaggConfig,
    PrefillDecision,
    choose_decode,
    decide_prefill,
    layout_differences,
)
from .pool import Worker, WorkerPool
from .prefix_index import PromptHashes

log = logging.getLogger("baton.router.dispatch")

# Worker answers that mean "this request is wrong", not "this worker is broken".
_CLIENT_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE)


@dataclass(frozen=True)
class DispatchConfig:
    disagg: DisaggConfig = field(default_factory=DisaggConfig)
    prefill_timeout_s: float = 120.0
    request_timeout_s: float = 3600.0
    worker_wait_s: float = 15.0  # how long a request may wait for a usable worker before 503
    max_attempts: int = 8


@dataclass
class Job:
    """One request as the workers see it; ``sampling.seed`` is always set (see internals.md)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: pb2.SamplingParams


def attempt_sampling(sampling: pb2.SamplingParams, resume: Sequence[int]) -> pb2.SamplingParams:
    """The sampling an attempt sends: a resumed attempt does not ask for prompt logprobs again
    (the client got them with the first token)."""
    if not resume or not sampling.HasField("prompt_logprobs"):
        return sampling
    copy = pb2.SamplingParams()
    copy.CopyFrom(sampling)
    copy.ClearField("prompt_logprobs")
    return copy


def is_client_error(code: grpc.StatusCode) -> bool:
    """True when a worker refused the request itself (retrying elsewhere cannot help)."""
    return code in _CLIENT_CODES


class Dispatcher:
    """Runs requests over a prefill pool and a decode pool."""

    def __init__(
        self, prefill: WorkerPool, decode: WorkerPool, cfg: DispatchConfig, metrics: RouterMetrics
    ) -> None:
        self.prefill = prefill
        self.decode = decode
        self.cfg = cfg
        self.metrics = metrics
        self._background: set[asyncio.Task] = set()
        self._warned: set[tuple[str, str]] = set()  # (prefill hash, decode hash) pairs logged

    async def generate(self, job: Job) -> AsyncIterator[Progress]:
        """Yield the request's output tokens; raises ApiError when it cannot be served.

        Closing the generator early (client gone, stop string reached) cancels the work on
        every worker involved.
        """
        known: list[int] = []
        failures = 0
        excluded: dict[str, set[str]] = {"prefill": set(), "decode": set()}
        last_error = "no attempt made"
        while True:
            if failures >= self.cfg.max_attempts:
                raise internal(f"request {job.request_id} failed {failures} times; last error: {last_error}")
            prompt = PromptHashes([*job.prompt_token_ids, *known])
            dw = await self._pick_decode(excluded["decode"], prompt)
            # Count the request on its decode worker from the moment it is chosen, so that
            # concurrent arrivals spread out while they are still prefilling.
            dw.inflight += 1
            attempt = self._attempt(job, f"{job.request_id}-{failures}", dw, known, excluded, prompt)
            try:
                # aclosing: when our caller stops early, the attempt's RPCs are cancelled at once.
                async with contextlib.aclosing(attempt):
                    async for ev in attempt:
                        yield ev
                        if ev.finish_reason:
                            return
            except _Retry as r:
                last_error = r.why
                if known:
                    self.metrics.failovers.inc()  # the next attempt resumes after tokens already sent
            finally:
                dw.inflight -= 1
            failures += 1

    async def _attempt(
        self,
        job: Job,
        sub_id: str,
        dw: Worker,
        known: list[int],
        excluded: dict[str, set[str]],
        prompt: PromptHashes,
    ) -> AsyncIterator[Progress]:
        """One try on one decode worker (and maybe one prefill worker); _Retry when it failed.

        Appends every token it yields to ``known``.
        """
        decision = self._place_prefill(dw, excluded["prefill"], prompt)
        handle = None
        first = 0
        resume = list(known)
        pw: Worker | None = None
        sampling = attempt_sampling(job.sampling, resume)
        if decision.remote:
            pw = self.prefill.workers[decision.worker]  # type: ignore[index]
            try:
                resp = await self._prefill(pw, job, sampling, sub_id, resume)
            except grpc.aio.AioRpcError as e:
                raise self._failed(self.prefill, pw.address, excluded, e) from None
            handle, first = resp.handle, resp.first_token
            known.append(first)
            yield Progress(
                (first,),
                logprobs=(resp.first_logprob,) if resp.HasField("first_logprob") else (),
                prompt_logprobs=resp.prompt_logprobs if resp.HasField("prompt_logprobs") else None,
                cached_tokens=resp.cached_tokens,
            )
        stream = self._stream(dw, job, sampling, sub_id, resume, handle, first, known)
        try:
            async with contextlib.aclosing(stream):
                async for ev in stream:
                    known.extend(ev.token_ids)
                    if ev.token_ids or ev.finish_reason:
                        yield ev
                    if ev.finish_reason:
                        self.decode.mark_ok(dw.address)
                        return
            why = f"decode {dw.address}: stream ended without a finish reason"
            self.decode.mark_failed(dw.address, why)
            self.metrics.retries.labels("decode", "incomplete_stream").inc()
        except grpc.aio.AioRpcError as e:
            if pw is not None and e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                # The decode worker refused this prefill worker's KV handle (incompatible or
                # malformed): not the decode worker's fault. Avoid that prefill worker instead;
                # once every one is avoided, the decode worker prefills locally.
                excluded["prefill"].add(pw.address)
                self.metrics.retries.labels("prefill", "kv_handle_refused").inc()
                raise _Retry(
                    f"decode {dw.address} refused the KV handle of {pw.address}: {e.details()}"
                ) from None
            raise self._failed(self.decode, dw.address, excluded, e) from None
        except WorkerDown:
            why = f"decode {dw.address}: stopped answering Health"
            self.metrics.retries.labels("decode", "unreachable").inc()
        finally:
            decoded_past_handoff = len(known) > len(resume) + 1
            if pw is not None and handle is not None and not decoded_past_handoff:
                # Decode never produced a token past the handoff: free the prefill side's KV
                # now rather than at its TTL (a no-op when decode already pulled it).
                self._spawn(self._release(pw, sub_id, handle.engine_id))
        raise _Retry(why)

    def _place_prefill(self, dw: Worker, excluded: set[str], prompt: PromptHashes) -> PrefillDecision:
        """Decide where the prompt is prefilled for decode worker ``dw``, and count the decision."""
        prefill_loads = self.prefill.loads(prompt)
        decision = decide_prefill(
            len(prompt.token_ids),
            prefill_loads,
            self.cfg.disagg,
            excluded,
            decode_compat=dw.health.kv_compat_hash if dw.health is not None else "",
        )
        self.metrics.placements.labels("remote" if decision.remote else "local", decision.reason).inc()
        if decision.remote:
            chosen = next(w for w in prefill_loads if w.address == decision.worker)
            self.metrics.prefix_placement("prefill", chosen, prefill_loads)
        if decision.reason == KV_INCOMPATIBLE:
            self._warn_incompatible(dw)
        return decision

    def _warn_incompatible(self, dw: Worker) -> None:
        """Log, once per pair of KV layouts, why a decode worker can use no prefill worker."""
        if dw.health is None or not dw.health.kv_compat_hash:
            return
        mine = dw.health.kv_compat_hash
        for pw in self.prefill.workers.values():
            theirs = pw.health.kv_compat_hash if pw.health is not None else ""
            if not theirs or theirs == mine or (theirs, mine) in self._warned:
                continue
            self._warned.add((theirs, mine))
            why = layout_differences(pw.health.kv_compat_fields, dw.health.kv_compat_fields)
            log.warning(
                "prefill worker %s and decode worker %s have different KV layouts (%s): the decode "
                "worker prefills locally until a prefill worker of its layout is up",
                pw.address,
                dw.address,
                why or f"hash {theirs[:12]} != {mine[:12]}",
            )

    async def _pick_decode(self, excluded: set[str], prompt: PromptHashes) -> Worker:
        weight, n = self.cfg.disagg.prefix_weight, len(prompt.token_ids)
        prefill = self.prefill.loads()
        loads = self.decode.loads(prompt)
        best = choose_decode(loads, excluded, prefill, n, weight)
        if best is None and excluded:
            excluded.clear()  # every worker failed once: let back-offs and health decide
            best = choose_decode(loads, (), prefill, n, weight)
        if best is None:
            if not await self.decode.wait_usable(self.cfg.worker_wait_s):
                raise unavailable(f"no ready decode worker (known: {sorted(self.decode.workers) or 'none'})")
            loads = self.decode.loads(prompt)
            best = choose_decode(loads, (), self.prefill.loads(), n, weight)
            if best is None:
                raise unavailable("no ready decode worker")
        self.metrics.prefix_placement("decode", best, loads)
        return self.decode.workers[best.address]

    async def _prefill(
        self, pw: Worker, job: Job, sampling: pb2.SamplingParams, sub_id: str, resume: list[int]
    ) -> pb2.PrefillResponse:
        tokens = len(job.prompt_token_ids) + len(resume)
        pw.inflight += 1
        pw.inflight_prompt_tokens += tokens
        request = pb2.PrefillRequest(
            request_id=sub_id,
            prompt_token_ids=job.prompt_token_ids,
            sampling=sampling,
            resume_token_ids=resume,
        )
        done = False
        try:
            assert pw.calls is not None  # every prefill worker has one (WorkerPool)
            resp = await pw.calls.prefill(request, self.cfg.prefill_timeout_s, self._count_prefill)
            done = True
            self.prefill.mark_ok(pw.address)
            return resp
        finally:
            pw.inflight -= 1
            pw.inflight_prompt_tokens -= tokens
            if not done:
                # The stream call already told the worker; Cancel also frees KV issued before.
                self._spawn(self._cancel(pw, sub_id))

    def _count_prefill(self, transport: str) -> None:
        self.metrics.prefill_calls.labels(transport).inc()

    async def _stream(
        self,
        dw: Worker,
        job: Job,
        sampling: pb2.SamplingParams,
        sub_id: str,
        resume: list[int],
        handle: pb2.KvHandle | None,
        first: int,
        known: list[int],
    ) -> AsyncIterator[Progress]:
        req = pb2.GenerateRequest(
            request_id=sub_id,
            prompt_token_ids=job.prompt_token_ids,
            sampling=sampling,
            resume_token_ids=resume,
        )
        if handle is not None:
            req.handle.CopyFrom(handle)
            req.first_token = first
        call = dw.stub.Generate(req, timeout=self.cfg.request_timeout_s)
        finished = False
        watcher = asyncio.get_running_loop().create_task(cancel_when_down(dw, call))
        try:
            while True:
                chunk = await next_chunk(call, watcher)
                if chunk is None:
                    return
                if chunk.kv_transfer_bytes:
                    self.metrics.kv_bytes.observe(chunk.kv_transfer_bytes)
                    self.metrics.kv_seconds.observe(chunk.kv_transfer_seconds)
                ev = chunk_progress(chunk, len(known))
                finished = ev.finish_reason is not None
                yield ev
                if finished:
                    return
        finally:
            watcher.cancel()
            if not finished:
                call.cancel()
                self._spawn(self._cancel(dw, sub_id))

    def _failed(
        self, pool: WorkerPool, address: str, excluded: dict[str, set[str]], e: grpc.aio.AioRpcError
    ) -> _Retry:
        """Classify a worker's RPC error: ApiError(400) when the request itself is bad, else eject
        the worker and return the _Retry to raise."""
        why = f"{pool.role} {address}: {e.code().name} {e.details()}"
        if is_client_error(e.code()):
            details = e.details() or why
            code = (
                "context_length_exceeded"
                if details.startswith("context_length_exceeded")
                else "invalid_value"
            )
            raise bad_param("prompt", details, code=code)
        pool.mark_failed(address, why)
        excluded[pool.role].add(address)
        self.metrics.retries.labels(pool.role, e.code().name.lower()).inc()
        return _Retry(why)

    async def _cancel(self, w: Worker, sub_id: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await w.stub.Cancel(pb2.CancelRequest(request_id=sub_id), timeout=2.0)

    async def _release(self, w: Worker, sub_id: str, engine_id: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await w.stub.Release(pb2.ReleaseRequest(request_id=sub_id, engine_id=engine_id), timeout=2.0)

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        # Cleanup must outlive the (possibly cancelled) request task; keep a reference until done.
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class _Retry(Exception):
    """An attempt failed in a way another worker may not; ``why`` ends up in the final error."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why
