"""The decode worker's gRPC service: Generate (streams TokenChunks), Cancel, Health.

Generate with a KV handle: check the handle (compat hash first), allocate blocks in this pool
(waiting, counted in the queue, when none are free), pull the KV (NIXL READ or the PullKv
stream; the prefill side is told to free), then join the engine's running batch. Without a
handle the engine prefills locally. Every failure before the first token leaves no block held on
either side and surfaces as a typed gRPC status (see :func:`convert.status_for`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import grpc

from baton_worker.engine import (
    EngineLoop,
    EngineRequest,
    KvBlockPool,
    LoadedModel,
    Prefilled,
    RequestStream,
    validate_request,
)
from baton_worker.kv.errors import KvError, KvHandleError, KvTransferError
from baton_worker.kv.handle import CompatInfo, check_handle
from baton_worker.kv.sink import KvSink
from baton_worker.rpc import pb2, pb2_grpc
from baton_worker.server.convert import prefix_events_pb, sampling_from_pb, status_for, token_chunk
from baton_worker.server.lifecycle import Lifecycle, NotAccepting
from baton_worker.server.metrics import LoadSnapshot, WorkerMetrics


class DecodeService(pb2_grpc.DecodeWorkerServicer):
    def __init__(
        self,
        *,
        model: LoadedModel,
        pool: KvBlockPool,
        loop: EngineLoop,
        sink: KvSink,
        compat: CompatInfo,
        lifecycle: Lifecycle,
        served_name: str,
        kv_timeout_s: float = 30.0,
    ) -> None:
        self.model = model
        self.pool = pool
        self.loop = loop
        self.sink = sink
        self.compat = compat
        self.lifecycle = lifecycle
        self.served_name = served_name
        self.kv_timeout_s = kv_timeout_s
        self.engine_id = f"decode-{id(self):x}-{int(time.time() * 1000):x}"
        self.metrics = WorkerMetrics("decode", self.snapshot)
        self._pulling = 0  # pulls with blocks allocated (waiters for blocks count in the pool)
        self._active: set[str] = set()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    def snapshot(self) -> LoadSnapshot:
        stats = self.loop.engine.stats()
        ready, _ = self.lifecycle.readiness()
        return LoadSnapshot(
            queue_depth=stats.waiting + self._pulling,
            running=stats.running,
            free_blocks=stats.free_blocks,
            total_blocks=stats.total_blocks,
            ready=ready,
            draining=self.lifecycle.draining,
            freed={},
            prefix=self.pool.prefix_stats() if self.loop.engine.prefix_caching else None,
        )

    def Generate(
        self, request: pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[pb2.TokenChunk]:  # noqa: N802
        guard = self.lifecycle.request()
        try:
            guard.__enter__()
        except NotAccepting as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"not_ready: decode worker is {exc}")
        try:
            yield from self._generate(request, context)
        finally:
            guard.__exit__(None, None, None)

    def _fail(self, context: grpc.ServicerContext, exc: BaseException) -> None:
        self.metrics.request("error")
        status = status_for(exc)
        context.abort(status.code, status.message)

    def _generate(
        self, request: pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[pb2.TokenChunk]:
        handle = request.handle if request.HasField("handle") else None
        try:
            plain = EngineRequest(
                request.request_id,
                tuple(request.prompt_token_ids),
                sampling_from_pb(request.sampling),
                None,
                tuple(request.resume_token_ids),
            )
            validate_request(plain, self.model.max_model_len, self.pool, self.model.shape.vocab_size)
            if handle is not None:
                check_handle(handle, self.compat)
                if handle.layout.num_tokens != plain.prefix_len:
                    raise KvHandleError(
                        "layout.num_tokens",
                        f"{handle.layout.num_tokens}, but prompt + resume are {plain.prefix_len}",
                    )
        except Exception as exc:
            if handle is not None and handle.prefill_address:
                # Nobody will pull these blocks: free them on the prefill side now.
                self.sink.release_remote(handle, time.monotonic() + 1.0)
            self._fail(context, exc)
        kv_seconds, kv_bytes = 0.0, 0
        engine_request = plain
        if handle is not None:
            blocks, kv_seconds, kv_bytes = self._pull(
                handle, [*plain.prompt_token_ids, *plain.resume_token_ids], context
            )
            engine_request = EngineRequest(
                plain.request_id,
                plain.prompt_token_ids,
                plain.sampling,
                Prefilled(tuple(blocks), plain.prefix_len, int(request.first_token)),
                plain.resume_token_ids,
            )
        try:
            stream = self.loop.submit(engine_request)
        except Exception as exc:
            if engine_request.prefilled is not None:
                self.pool.free(list(engine_request.prefilled.block_ids))
            self._fail(context, exc)
        finished = threading.Event()
        cancelled = self._take_cancel(plain.request_id)
        if (
            not context.add_callback(lambda: None if finished.is_set() else self.loop.abort(plain.request_id))
            or cancelled
        ):
            # The caller left (or sent Cancel) while the KV was being pulled: end it now.
            self.loop.abort(plain.request_id)
        with self._lock:
            self._active.add(plain.request_id)
        try:
            yield from self._stream(stream, context, finished, kv_seconds, kv_bytes)
        finally:
            with self._lock:
                self._active.discard(plain.request_id)

    def _stream(
        self,
        stream: RequestStream,
        context: grpc.ServicerContext,
        finished: threading.Event,
        kv_seconds: float,
        kv_bytes: int,
    ) -> Iterator[pb2.TokenChunk]:
        first = True
        while True:
            try:
                out = stream.get(timeout=1.0)
            except queue.Empty:
                if not context.is_active():
                    return
                continue
            except Exception as exc:
                finished.set()
                self._fail(context, exc)
            if out.finished:
                finished.set()
            yield token_chunk(out, kv_seconds if first else 0.0, kv_bytes if first else 0)
            first = False
            if out.finished:
                self.metrics.request(out.finish_reason or "stop")
                return

    def _cached_for_pull(self, handle: pb2.KvHandle, tokens: list[int]) -> list[int]:
        """Held blocks of the handle's leading blocks that this worker's prefix cache already has
        (a follow-up turn of a conversation it served): those are not transferred again."""
        if not self.loop.engine.prefix_caching or not getattr(self.sink, "supports_skip", False):
            return []
        return self.pool.match_tokens(tokens, False, limit=len(handle.block_ids))[1]

    def _pull(
        self, handle: pb2.KvHandle, tokens: list[int], context: grpc.ServicerContext
    ) -> tuple[list[int], float, int]:
        left = context.time_remaining()
        budget = self.kv_timeout_s if left is None else min(self.kv_timeout_s, left)
        deadline = time.monotonic() + budget
        hit = self._cached_for_pull(handle, tokens)
        blocks: list[int] | None = None
        counted = False
        try:
            # Waiting for blocks counts in the pool's waiters (the queue depth Health reports).
            need = len(handle.block_ids) - len(hit)
            blocks = self.pool.allocate_blocking(
                need, max(0.0, deadline - time.monotonic()), num_tokens=len(tokens)
            )
            if blocks is None:
                raise KvTransferError(f"no free KV blocks for {need} blocks within {budget:.1f}s")
            with self._lock:
                self._pulling += 1
                counted = True
            result = self.sink.pull(handle, blocks, deadline, skip=len(hit))
        except Exception as exc:
            self.pool.free(hit + (blocks or []))
            self.sink.release_remote(handle, time.monotonic() + 1.0)
            if not isinstance(exc, KvError):
                exc = KvTransferError(f"{type(exc).__name__}: {exc}")
            self._fail(context, exc)
            raise  # unreachable: abort raises
        finally:
            if counted:
                with self._lock:
                    self._pulling -= 1
        self.metrics.transfer(result.backend, result.bytes, result.seconds)
        return hit + blocks, result.seconds, result.bytes

    def Cancel(self, request: pb2.CancelRequest, context: grpc.ServicerContext) -> pb2.CancelResponse:  # noqa: N802
        if self.loop.abort(request.request_id):
            return pb2.CancelResponse(cancelled=True)
        with self._lock:
            # Not in the engine yet (still pulling KV): remembered, applied when it joins.
            if len(self._cancelled) < 10_000:
                self._cancelled.add(request.request_id)
        return pb2.CancelResponse(cancelled=False)

    def _take_cancel(self, request_id: str) -> bool:
        with self._lock:
            if request_id in self._cancelled:
                self._cancelled.discard(request_id)
                return True
            return False

    def Health(self, request: pb2.HealthRequest, context: grpc.ServicerContext) -> pb2.HealthResponse:  # noqa: N802
        stats = self.loop.engine.stats()
        ready, _ = self.lifecycle.readiness()
        reply = pb2.HealthResponse(
            role="decode",
            ready=ready,
            queue_depth=stats.waiting + self._pulling,
            queued_prompt_tokens=stats.queued_prompt_tokens,
            running=stats.running,
            free_blocks=stats.free_blocks,
            total_blocks=stats.total_blocks,
            engine_id=self.engine_id,
            kv_compat_hash=self.compat.hash(),
            kv_compat_fields=self.compat.fields_json(),
            model=self.served_name,
            max_model_len=self.model.max_model_len,
            max_batch_size=stats.max_batch_size,
            draining=self.lifecycle.draining,
        )
        if request.want_prefix_events and self.loop.engine.prefix_caching:
            reply.prefix_cache.CopyFrom(prefix_events_pb(self.pool, request, self.engine_id))
        return reply

    def abort_all(self) -> int:
        """Abort every running request (end of drain): their streams end with "abort"."""
        with self._lock:
            ids = list(self._active)
        return sum(1 for rid in ids if self.loop.abort(rid))
