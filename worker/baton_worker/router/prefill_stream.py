"""The router's side of ``PrefillStream``: one long-lived stream per prefill worker.

Every Prefill goes over the worker's stream instead of a unary call of its own, which saves the
per-call setup of gRPC (0.01-0.2 ms per call, more for short prompts). A call gets a ``call_id``; its reply is
matched by that id; its deadline is enforced here and sent along, so the worker gives up too.

Failures keep the unary call's contract, so the dispatcher cannot tell the two apart:
- a call the worker refuses fails with the same status code and message as unary ``Prefill``;
- a call that outlives its timeout (counted from when it was queued to be sent) fails
  DEADLINE_EXCEEDED, and the worker is told to free its KV if it ever issues it (the same as a
  cancelled call);
- when the stream breaks (worker died, restarted, unreachable), every call in flight on it fails
  UNAVAILABLE, which is retryable, and the next call opens a new stream.

A worker without ``PrefillStream`` (UNIMPLEMENTED: an older version during a rolling upgrade) or
with all its stream slots taken (``prefill_streams_exhausted``) is called with unary ``Prefill``
for :data:`FALLBACK_S`, then the stream is tried again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import grpc

from baton_worker.rpc import pb2, pb2_grpc

log = logging.getLogger("baton.router.prefill_stream")

FALLBACK_S = 30.0
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_SERVICE = pb2.DESCRIPTOR.services_by_name["PrefillWorker"]
PREFILL_STREAM_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['PrefillStream'].name}"


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _check_call_wire() -> None:
    """encode_call writes PrefillCall's fields 1-3 by hand: fail at import, not on the wire, if
    the message ever changes under it."""
    fields = pb2.PrefillCall.DESCRIPTOR.fields_by_number
    want = {1: ("call_id", "uint64"), 2: ("request", "message"), 3: ("timeout_ms", "uint32")}
    types = {4: "uint64", 11: "message", 13: "uint32"}  # FieldDescriptor.TYPE_* numbers
    got = {n: (fields[n].name, types.get(fields[n].type, str(fields[n].type))) for n in want if n in fields}
    if got != want:
        raise ImportError(f"PrefillCall changed: fields {got}, encode_call writes {want}")


_check_call_wire()
MAX_TIMEOUT_MS = 0xFFFFFFFF  # timeout_ms is a uint32


def timeout_ms(timeout_s: float) -> int:
    """A call's deadline as PrefillCall.timeout_ms: at least 1 ms (0 means none), at most what a
    uint32 holds (a hand-written varint would not stop a larger value: the worker would keep
    its low 32 bits)."""
    ms = timeout_s * 1000
    return MAX_TIMEOUT_MS if not ms < MAX_TIMEOUT_MS else max(1, math.ceil(ms))


def encode_call(call_id: int, request: pb2.PrefillRequest, timeout_ms: int) -> bytes:
    """The wire bytes of ``PrefillCall(call_id=, request=, timeout_ms=)``, written around the
    request's own bytes: building the message would copy the request first (a 4k-token prompt:
    ~135 us for copy plus serialize, against ~50 us for this), on the router's one event loop.
    ``timeout_ms`` must fit a uint32 (see :func:`timeout_ms`)."""
    if not 0 <= timeout_ms <= MAX_TIMEOUT_MS:
        raise ValueError(f"timeout_ms {timeout_ms} does not fit a uint32")
    body = request.SerializeToString()
    return b"".join(
        (b"\x08", _varint(call_id), b"\x12", _varint(len(body)), body, b"\x18", _varint(timeout_ms))
    )


def _as_bytes(message: bytes) -> bytes:
    return message  # what the writer queues is already encoded


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The exception a unary call failing with ``code`` would have raised."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def reply_outcome(reply: pb2.PrefillReply) -> pb2.PrefillResponse | grpc.aio.AioRpcError:
    """A reply as the unary call's result: the response, or the error it would have raised."""
    if reply.status_code == 0:
        return reply.response
    code = _CODES.get(reply.status_code, grpc.StatusCode.UNKNOWN)
    return rpc_error(code, reply.status_message)


def means_no_stream(code: grpc.StatusCode, details: str, answered: bool) -> bool:
    """True when a stream failed before serving anything because the worker takes no stream from
    us (no such RPC, or all its stream slots taken): its calls never ran and may go unary."""
    if answered:
        return False
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return True
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith("prefill_streams_exhausted")


class _NoStream(Exception):
    """This worker takes no stream from us now: call it unary."""


_CLOSE = object()  # in a stream's outbox: half-close after what is queued before it


class _Out:
    """A message in a stream's outbox: its encoded bytes and what the writer must know."""

    __slots__ = ("call_id", "cancel", "data")

    def __init__(self, call_id: int, cancel: bool, data: bytes) -> None:
        self.call_id = call_id
        self.cancel = cancel
        self.data = data


class _Stream:
    """One open PrefillStream: its outbox (one writer task writes it, so that no caller's
    cancellation can cancel the RPC: grpc.aio cancels the whole call when a write is cancelled),
    and the calls waiting for their replies."""

    def __init__(self, call: Any) -> None:
        self.call = call  # grpc.aio.StreamStreamCall
        self.pending: dict[int, asyncio.Future] = {}
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.answered = False
        self.ended = False
        self.closing = False  # close() was called: half-close once no call waits any more
        self.tasks: list[asyncio.Task] = []
        self.closed_why = "was closed"


class PrefillCaller:
    """Prefill calls to one worker, multiplexed over one stream (see the module docstring)."""

    def __init__(self, channel: grpc.aio.Channel, address: str = "") -> None:
        self._stub = pb2_grpc.PrefillWorkerStub(channel)
        # PrefillStream with our own encoding of PrefillCall (encode_call): the stub's would
        # copy each request into a PrefillCall first.
        self._open_stream = channel.stream_stream(
            PREFILL_STREAM_METHOD,
            request_serializer=_as_bytes,
            response_deserializer=pb2.PrefillReply.FromString,
        )
        self.address = address
        self._stream: _Stream | None = None
        self._ids = itertools.count(1)
        self._unary_until = 0.0  # time.monotonic() until which this worker is called unary
        self.stream_calls = 0
        self.unary_calls = 0

    @property
    def streaming(self) -> bool:
        """Whether a stream is open now."""
        return self._stream is not None

    async def prefill(
        self, request: pb2.PrefillRequest, timeout: float, record: Callable[[str], None] | None = None
    ) -> pb2.PrefillResponse:
        """Run one Prefill within ``timeout`` seconds; raises grpc.aio.AioRpcError like the unary
        call. ``record`` is told the transport used: ``"stream"`` or ``"unary"``."""
        t0 = time.monotonic()
        if t0 >= self._unary_until:
            try:
                return await self._on_stream(request, timeout, record)
            except _NoStream:
                pass
        self.unary_calls += 1
        if record is not None:
            record("unary")
        left = max(0.001, timeout - (time.monotonic() - t0))
        return await self._stub.Prefill(request, timeout=left)

    async def _on_stream(
        self, request: pb2.PrefillRequest, timeout: float, record: Callable[[str], None] | None
    ) -> pb2.PrefillResponse:
        call_id = next(self._ids)
        data = encode_call(call_id, request, timeout_ms(timeout))  # before anything is registered
        stream = self._stream or self._open()
        fut = asyncio.get_running_loop().create_future()
        stream.pending[call_id] = fut
        stream.outbox.put_nowait(_Out(call_id, False, data))
        on_stream = True
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                return fut.result()  # the reply won the race against the deadline
            raise rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"prefill did not answer within {timeout:.1f}s"
            ) from None
        except _NoStream:
            on_stream = False  # never ran there; prefill() calls it unary
            raise
        finally:
            if on_stream:
                self.stream_calls += 1
                if record is not None:
                    record("stream")
            if stream.pending.pop(call_id, None) is not None and not stream.ended:
                # Given up (timeout, or our caller was cancelled): the worker frees its KV. The
                # writer skips the call itself if it has not gone out yet.
                cancel = pb2.PrefillCall(call_id=call_id, cancel=True).SerializeToString()
                stream.outbox.put_nowait(_Out(call_id, True, cancel))
            if stream.closing and not stream.pending and not stream.ended:
                stream.outbox.put_nowait(_CLOSE)  # the last call of a closed stream is done

    def _open(self) -> _Stream:
        stream = _Stream(self._open_stream())
        loop = asyncio.get_running_loop()
        stream.tasks = [loop.create_task(self._write(stream)), loop.create_task(self._read(stream))]
        self._stream = stream
        return stream

    async def _write(self, stream: _Stream) -> None:
        try:
            # The worker accepts the stream (or refuses it) before anything is written: a write
            # racing a refusal fails inside gRPC with INTERNAL and hides the worker's real status
            # (UNIMPLEMENTED, prefill_streams_exhausted), which says to go unary instead.
            await stream.call.initial_metadata()
            while True:
                msg = await stream.outbox.get()
                if msg is _CLOSE:
                    await stream.call.done_writing()
                    return
                if not msg.cancel and msg.call_id not in stream.pending:
                    continue  # given up before it went out: the worker never sees it
                await stream.call.write(msg.data)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the stream is over: the reader fails what waits on it
        except Exception:  # a bug: end the stream, so the reader fails what waits on it
            log.exception("prefill stream writer to %s failed", self.address)
            stream.call.cancel()

    async def _read(self, stream: _Stream) -> None:
        error: grpc.aio.AioRpcError | _NoStream | None = None
        try:
            while True:
                reply = await stream.call.read()
                if reply is grpc.aio.EOF:
                    break
                stream.answered = True
                fut = stream.pending.pop(reply.call_id, None)
                if fut is None or fut.done():
                    continue  # given up meanwhile
                outcome = reply_outcome(reply)
                if isinstance(outcome, grpc.aio.AioRpcError):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)
        except grpc.aio.AioRpcError as e:
            if means_no_stream(e.code(), e.details() or "", stream.answered):
                self._no_stream(e)
                error = _NoStream()
            else:
                error = rpc_error(
                    grpc.StatusCode.UNAVAILABLE,
                    f"prefill stream to {self.address} broke: {e.code().name} {e.details()}",
                )
        except asyncio.CancelledError:
            # grpc.aio raises this when the call was cancelled locally (reset), or our task was.
            error = rpc_error(
                grpc.StatusCode.UNAVAILABLE, f"prefill stream to {self.address} {stream.closed_why}"
            )
        finally:
            stream.ended = True
            if self._stream is stream:
                self._stream = None
            if error is None:
                error = rpc_error(grpc.StatusCode.UNAVAILABLE, f"prefill stream to {self.address} ended")
            for fut in stream.pending.values():
                if not fut.done():
                    fut.set_exception(error)
            stream.pending.clear()
            for task in stream.tasks:
                if task is not asyncio.current_task():
                    task.cancel()

    def _no_stream(self, e: grpc.aio.AioRpcError) -> None:
        self._unary_until = time.monotonic() + FALLBACK_S
        why = (
            "has no PrefillStream (older version?)"
            if e.code() == grpc.StatusCode.UNIMPLEMENTED
            else e.details()
        )
        log.warning("prefill worker %s %s: calling it unary for %.0fs", self.address, why, FALLBACK_S)

    def reset(self, why: str) -> None:
        """Break the open stream now (the worker stopped answering): calls in flight on it fail
        UNAVAILABLE at once instead of at their deadline."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.closed_why = f"was reset: {why}"
            stream.call.cancel()

    async def close(self) -> None:
        """Half-close the stream once no call waits on it any more: calls in flight still get their
        replies (and a caller giving up still tells the worker), then it ends."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.closing = True
            if not stream.pending:
                stream.outbox.put_nowait(_CLOSE)
