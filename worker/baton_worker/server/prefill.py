"""The prefill worker's gRPC service: Prefill (unary and PrefillStream), Release,
GetAgentMetadata, PullKv, Cancel, Health.

Thin glue: the engine's :class:`PrefillRunner` computes, :class:`KvSource` holds and serves the
blocks; this module maps requests and errors between them and the wire.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from baton_worker.engine import LoadedModel, PrefillRunner
from baton_worker.kv.source import KvSource, PullRefused
from baton_worker.rpc import pb2, pb2_grpc
from baton_worker.server.convert import (
    logprob_to_pb,
    prefix_events_pb,
    prompt_logprobs_to_pb,
    sampling_from_pb,
    status_for,
)
from baton_worker.server.lifecycle import Lifecycle, NotAccepting
from baton_worker.server.metrics import LoadSnapshot, WorkerMetrics
from baton_worker.server.prefill_stream import CallRefused, CallState, PrefillStreams

# A prefill waits this long at most for KV blocks to free up (within the call's deadline).
BLOCK_WAIT_S = 30.0


class PrefillService(pb2_grpc.PrefillWorkerServicer):
    def __init__(
        self,
        *,
        model: LoadedModel,
        runner: PrefillRunner,
        source: KvSource,
        lifecycle: Lifecycle,
        served_name: str,
    ) -> None:
        self.model = model
        self.runner = runner
        self.source = source
        self.lifecycle = lifecycle
        self.served_name = served_name
        self.metrics = WorkerMetrics("prefill", self.snapshot)
        self._running = 0
        self._lock = threading.Lock()
        # Calls arriving on PrefillStreams run in a pool as large as the server's (unary) one.
        self.streams = PrefillStreams(self.serve_prefill, max_calls=max(16, runner.max_batch_size + 16))

    def close(self) -> None:
        self.streams.close()

    def snapshot(self) -> LoadSnapshot:
        stats = self.runner.stats()
        ready, _ = self.lifecycle.readiness()
        c = self.source.counters
        return LoadSnapshot(
            queue_depth=stats.waiting,
            running=self._running,
            free_blocks=stats.free_blocks,
            total_blocks=stats.total_blocks,
            ready=ready,
            draining=self.lifecycle.draining,
            freed={
                "notification": c.freed_by_notification,
                "release": c.freed_by_release,
                "ttl": c.freed_by_ttl,
            },
            prefix=self.runner.pool.prefix_stats() if self.runner.prefix_caching else None,
        )

    def Prefill(self, request: pb2.PrefillRequest, context: grpc.ServicerContext) -> pb2.PrefillResponse:  # noqa: N802
        try:
            return self.serve_prefill(request, context)
        except CallRefused as exc:
            context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    def PrefillStream(  # noqa: N802
        self, request_iterator: Iterator[pb2.PrefillCall], context: grpc.ServicerContext
    ) -> Iterator[pb2.PrefillReply]:
        return self.streams.serve(request_iterator, context)

    def serve_prefill(self, request: pb2.PrefillRequest, call: CallState) -> pb2.PrefillResponse:
        """One Prefill, unary or on a stream; raises CallRefused with the status to fail with."""
        try:
            with self.lifecycle.request():
                with self._lock:
                    self._running += 1
                try:
                    return self._prefill(request, call)
                finally:
                    with self._lock:
                        self._running -= 1
        except NotAccepting as exc:
            raise CallRefused(grpc.StatusCode.UNAVAILABLE, f"not_ready: prefill worker is {exc}") from None

    def _prefill(self, request: pb2.PrefillRequest, call: CallState) -> pb2.PrefillResponse:
        left = call.time_remaining()
        wait = BLOCK_WAIT_S if left is None else max(0.0, min(BLOCK_WAIT_S, left - 0.05))
        try:
            sampling = sampling_from_pb(request.sampling)
            result = self.runner.prefill(
                request.request_id,
                list(request.prompt_token_ids),
                sampling,
                resume_token_ids=list(request.resume_token_ids),
                block_wait_s=wait,
            )
        except Exception as exc:
            self.metrics.request("error")
            status = status_for(exc)
            raise CallRefused(status.code, status.message) from None
        try:
            handle = self.source.issue(request.request_id, list(result.block_ids), result.num_tokens)
        except Exception as exc:
            self.runner.release(request.request_id)
            self.metrics.request("error")
            status = status_for(exc)
            raise CallRefused(status.code, status.message) from None
        if not call.is_active():
            # The caller gave up (deadline, disconnect, cancel): nobody will pull these blocks.
            self.source.release(request.request_id)
        self.metrics.request("ok")
        reply = pb2.PrefillResponse(
            first_token=result.first_token,
            handle=handle,
            prefill_seconds=result.prefill_seconds,
            cached_tokens=result.cached_tokens,
        )
        if result.first_logprob is not None:
            reply.first_logprob.CopyFrom(logprob_to_pb(result.first_logprob))
        if result.prompt_logprobs is not None:
            reply.prompt_logprobs.CopyFrom(prompt_logprobs_to_pb(result.prompt_logprobs))
        return reply

    def Release(self, request: pb2.ReleaseRequest, context: grpc.ServicerContext) -> pb2.ReleaseResponse:  # noqa: N802
        if request.engine_id and request.engine_id != self.source.engine_id:
            return pb2.ReleaseResponse(released=False)
        return pb2.ReleaseResponse(released=self.source.release(request.request_id))

    def GetAgentMetadata(
        self, request: pb2.AgentMetadataRequest, context: grpc.ServicerContext
    ) -> pb2.AgentMetadata:  # noqa: N802
        try:
            return self.source.agent_metadata(request.rank)
        except PullRefused as exc:
            context.abort(getattr(grpc.StatusCode, exc.status), str(exc))
            raise

    def PullKv(self, request: pb2.PullKvRequest, context: grpc.ServicerContext):  # noqa: N802
        try:
            chunks = self.source.pull(request)
        except PullRefused as exc:
            context.abort(getattr(grpc.StatusCode, exc.status), str(exc))
            raise
        for chunk in chunks:
            if not context.is_active():
                return
            yield chunk

    def Cancel(self, request: pb2.CancelRequest, context: grpc.ServicerContext) -> pb2.CancelResponse:  # noqa: N802
        return pb2.CancelResponse(cancelled=self.source.release(request.request_id))

    def Health(self, request: pb2.HealthRequest, context: grpc.ServicerContext) -> pb2.HealthResponse:  # noqa: N802
        stats = self.runner.stats()
        ready, _ = self.lifecycle.readiness()
        reply = pb2.HealthResponse(
            role="prefill",
            ready=ready,
            queue_depth=stats.waiting,
            queued_prompt_tokens=stats.queued_prompt_tokens,
            running=self._running,
            free_blocks=stats.free_blocks,
            total_blocks=stats.total_blocks,
            engine_id=self.source.engine_id,
            kv_compat_hash=self.source.compat.hash(),
            kv_compat_fields=self.source.compat.fields_json(),
            model=self.served_name,
            max_model_len=self.model.max_model_len,
            max_batch_size=self.runner.max_batch_size,
            draining=self.lifecycle.draining,
        )
        if request.want_prefix_events and self.runner.prefix_caching:
            reply.prefix_cache.CopyFrom(prefix_events_pb(self.runner.pool, request, self.source.engine_id))
        return reply
