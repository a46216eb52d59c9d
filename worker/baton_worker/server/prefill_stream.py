"""Serving ``PrefillStream``: many Prefill calls multiplexed over one long-lived gRPC stream.

The router keeps one stream open per prefill worker instead of making one unary call per
request, which saves the per-call setup of gRPC (docs/kv-transfer.md). On the worker, calls on
one stream run concurrently (the engine batches them) and replies go back in completion order,
matched by ``call_id``; :class:`PrefillStreams` says which threads do what.

Each call has its own deadline (``timeout_ms``, counted from its arrival). A call is *active*
while its stream is open, its caller has not cancelled it and its deadline has not passed; the
function that serves it checks that before handing out KV, exactly as the unary ``Prefill``
checks ``context.is_active()``, so a call nobody waits for never strands blocks.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import grpc

from baton_worker.rpc import pb2

log = logging.getLogger("baton.worker.prefill_stream")


class CallState(Protocol):
    """What serving one Prefill needs to know about its call (a grpc context has both)."""

    def time_remaining(self) -> float | None: ...

    def is_active(self) -> bool: ...


class CallRefused(Exception):
    """A call fails with this gRPC status (the unary RPC aborts with it; the stream replies it)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


PrefillFn = Callable[[pb2.PrefillRequest, CallState], pb2.PrefillResponse]


class StreamCall:
    """One call on a stream: its deadline and whether anybody still waits for its answer."""

    def __init__(self, timeout_ms: int, stream_active: Callable[[], bool]) -> None:
        self.deadline = time.monotonic() + timeout_ms / 1000.0 if timeout_ms else None
        self.cancelled = threading.Event()
        self._stream_active = stream_active

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def is_active(self) -> bool:
        if self.cancelled.is_set() or not self._stream_active():
            return False
        return self.deadline is None or time.monotonic() < self.deadline


def status_reply(call_id: int, code: grpc.StatusCode, message: str) -> pb2.PrefillReply:
    return pb2.PrefillReply(call_id=call_id, status_code=code.value[0], status_message=message)


# Open streams a worker accepts (one per router replica is the normal case); the worker's gRPC
# server has this many threads more than it would need without streams.
MAX_STREAMS = 8

_READ_DONE = object()
_END = object()


class _Queued:
    """A call read off a stream while every serving slot was taken: served when one frees."""

    __slots__ = ("call_id", "request", "state", "answer")

    def __init__(
        self,
        call_id: int,
        request: pb2.PrefillRequest,
        state: StreamCall,
        answer: Callable[[int, pb2.PrefillRequest, StreamCall], None],
    ) -> None:
        self.call_id = call_id
        self.request = request
        self.state = state
        self.answer = answer


class PrefillStreams:
    """The open ``PrefillStream`` RPCs of one worker; ``run`` serves each call.

    ``run`` returns the response or raises :class:`CallRefused`; anything else it raises is
    answered INTERNAL. At most ``max_calls`` calls are served at once (over all streams).

    Reading never waits for serving: each stream always has one pool thread reading it, so a
    cancel is seen at once and a call's deadline counts from when it was sent, not from when a
    serving slot freed. When a slot is free, the thread that read a call serves it itself after
    handing the reading on to another thread (leader/follower: no thread hop between a call's
    arrival and its start; a hop to an idle thread costs 0.1-0.4 ms on a busy 2-core machine,
    a quarter of the whole round trip). When none is free, the call waits in a queue and the
    reader reads on; a call that is no longer active by the time a slot frees is answered
    without being run.

    Each open stream also holds one of the gRPC server's threads for as long as it lives, so at
    most ``max_streams`` are accepted (more get RESOURCE_EXHAUSTED and the router falls back to
    unary Prefill for a while): they can never starve unary calls.
    """

    def __init__(self, run: PrefillFn, *, max_calls: int, max_streams: int = MAX_STREAMS) -> None:
        self.run = run
        self.max_streams = max_streams
        # Threads: at most max_calls serving (the slots) plus one reading each open stream.
        self._pool = ThreadPoolExecutor(
            max_workers=max_calls + max_streams, thread_name_prefix="prefill-call"
        )
        self._slots = threading.Semaphore(max_calls)
        self._queued: collections.deque[_Queued] = collections.deque()
        self._lock = threading.Lock()
        self._open: set[queue.SimpleQueue] = set()

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def end_all(self) -> None:
        """End every open stream now (drain: nothing is in flight any more); callers reconnect."""
        with self._lock:
            for replies in self._open:
                replies.put(_END)

    def close(self) -> None:
        self.end_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _serve_queued(self) -> None:
        """Hand queued calls to free slots (each in a pool thread of its own)."""
        while True:
            with self._lock:
                if not self._queued:
                    return
                if not self._slots.acquire(blocking=False):
                    return
                item = self._queued.popleft()
            try:
                self._pool.submit(self._run_queued, item)
            except RuntimeError:  # shutting down: answer every queued call without running it
                self._slots.release()
                with self._lock:
                    left, self._queued = [item, *self._queued], collections.deque()
                for it in left:
                    it.state.cancelled.set()
                    it.answer(it.call_id, it.request, it.state)
                return

    def _run_queued(self, item: _Queued) -> None:
        try:
            item.answer(item.call_id, item.request, item.state)
        finally:
            self._slots.release()
        self._serve_queued()

    def serve(
        self, calls: Iterator[pb2.PrefillCall], context: grpc.ServicerContext
    ) -> Iterator[pb2.PrefillReply]:
        """The replies of one stream. It ends once the caller has closed its side and every call
        it sent has been answered, or at :meth:`end_all`."""
        replies: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            full = len(self._open) >= self.max_streams
            if not full:
                self._open.add(replies)
        if full:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"prefill_streams_exhausted: {self.max_streams} PrefillStreams are open already",
            )
        # Accepted: say so before reading. The router writes nothing until then, so a refusal
        # (above, or UNIMPLEMENTED from a worker without streams) reaches it intact.
        context.send_initial_metadata(())
        try:
            yield from self._serve(calls, context, replies)
        finally:
            with self._lock:
                self._open.discard(replies)

    def _serve(
        self, calls: Iterator[pb2.PrefillCall], context: grpc.ServicerContext, replies: queue.SimpleQueue
    ) -> Iterator[pb2.PrefillReply]:
        stream = _Stream(self, context, replies)
        try:
            self._pool.submit(stream.read, calls)
        except RuntimeError:
            context.abort(grpc.StatusCode.UNAVAILABLE, "not_ready: prefill worker is stopping")
        reading, answered = True, 0
        while reading or answered < stream.sent:
            item = replies.get()
            if item is _END:
                return
            if item is _READ_DONE:
                reading = False
                continue
            answered += 1
            yield item


class _Stream:
    """One open stream's calls: read off it by one pool thread at a time, each answered into
    ``replies`` (see :class:`PrefillStreams` for which thread does what)."""

    def __init__(
        self, streams: PrefillStreams, context: grpc.ServicerContext, replies: queue.SimpleQueue
    ) -> None:
        self._streams = streams
        self._context = context
        self._replies = replies
        self._inflight: dict[int, StreamCall] = {}
        self._lock = threading.Lock()
        self.sent = 0  # calls that will get a reply (written by the reader only)

    def answer(self, call_id: int, request: pb2.PrefillRequest, state: StreamCall) -> None:
        if not state.is_active():
            # Given up (cancelled, past its deadline, stream gone) while it waited for a
            # slot: not run at all, so nothing is held for it.
            code = (
                grpc.StatusCode.CANCELLED if state.cancelled.is_set() else grpc.StatusCode.DEADLINE_EXCEEDED
            )
            reply = status_reply(call_id, code, "prefill call given up before it ran")
        else:
            try:
                reply = pb2.PrefillReply(call_id=call_id, response=self._streams.run(request, state))
            except CallRefused as exc:
                reply = status_reply(call_id, exc.code, exc.message)
            except Exception as exc:  # a bug: answer it rather than leave the caller waiting
                log.exception("prefill call %d (%s) failed", call_id, request.request_id)
                why = f"internal: {type(exc).__name__}: {exc}"
                reply = status_reply(call_id, grpc.StatusCode.INTERNAL, why)
        with self._lock:
            self._inflight.pop(call_id, None)
        self._replies.put(reply)

    def _admit(self, call: pb2.PrefillCall) -> StreamCall | None:
        """Track a new call; None (answered already) for a call_id still in flight."""
        self.sent += 1
        with self._lock:
            if call.call_id not in self._inflight:
                state = self._inflight[call.call_id] = StreamCall(call.timeout_ms, self._context.is_active)
                return state
        # A bug of the caller's, not of the request: INTERNAL (retried elsewhere), not
        # INVALID_ARGUMENT (which the router would answer 400 to the user).
        why = f"internal: call_id {call.call_id} is already in flight on this stream"
        self._replies.put(status_reply(call.call_id, grpc.StatusCode.INTERNAL, why))
        return None

    def _lead(self, call: pb2.PrefillCall, state: StreamCall, calls: Iterator[pb2.PrefillCall]) -> bool:
        """Holding a slot: hand the reading on to another thread and serve ``call`` here. False
        (the call answered UNAVAILABLE) when the pool is shut down: the worker is stopping."""
        streams = self._streams
        try:
            streams._pool.submit(self.read, calls)  # the next reader
        except RuntimeError:
            streams._slots.release()
            with self._lock:
                self._inflight.pop(call.call_id, None)
            self._replies.put(status_reply(call.call_id, grpc.StatusCode.UNAVAILABLE, "not_ready: stopping"))
            return False
        try:
            self.answer(call.call_id, call.request, state)
        finally:
            streams._slots.release()
        streams._serve_queued()
        return True

    def read(self, calls: Iterator[pb2.PrefillCall]) -> None:
        streams = self._streams
        try:
            for call in calls:
                if call.cancel:
                    with self._lock:
                        cancelled = self._inflight.get(call.call_id)
                    if cancelled is not None:
                        cancelled.cancelled.set()
                    continue
                state = self._admit(call)
                if state is None:
                    continue
                if streams._slots.acquire(blocking=False):
                    if self._lead(call, state, calls):
                        return
                    break
                with streams._lock:
                    streams._queued.append(_Queued(call.call_id, call.request, state, self.answer))
                streams._serve_queued()  # a slot may have freed meanwhile
        except grpc.RpcError:
            pass  # the stream broke: calls still running or queued see is_active() turn false
        except Exception:  # a malformed message, say: end the stream rather than hang it
            log.exception("prefill stream reader failed")
        self._replies.put(_READ_DONE)  # this thread stopped reading for good, and nobody reads on
