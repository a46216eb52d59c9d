"""The router's side of ``PrefillStream``: one long-lived stream per prefill worker.

Every Prefill goes over the worker's stream instead of a unary call of its own, which halves
the round trip in Python gRPC (docs/kv-transfer.md). A call gets a ``call_id``; its reply is
matched by that id; its deadline is enforced here and sent along, so the worker gives up too.

Failures keep the unary call's contract, so the dispatcher cannot tell the two apart:
- a call the worker refuses fails with the same status code and message as unary ``Prefill``;
- a call that outlives its timeout fails DEADLINE_EXCEEDED, and the worker is told to free its
  KV if it ever issues it (the same as a cancelled call);
- when the stream breaks (worker died, restarted, stopped answering Health), every call in flight
  on it fails UNAVAILABLE, which is retryable, and the next call opens a new stream.

A worker without ``PrefillStream`` (UNIMPLEMENTED: an older version during a rolling upgrade) is
called with unary ``Prefill`` from then on; one whose stream slots are all taken
(``prefill_streams_exhausted``) for :data:`FALLBACK_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import grpc

from baton_worker.rpc import pb2

log = logging.getLogger("baton.router.prefill_stream")

FALLBACK_S = 30.0
_CODES = {code.value[0]: code for code in grpc.StatusCode}


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


class _Stream:
    """One open PrefillStream and the calls waiting for their replies on it."""

    def __init__(self, call: Any) -> None:
        self.call = call  # grpc.aio.StreamStreamCall
        self.pending: dict[int, asyncio.Future] = {}
        self.answered = False
        self.reader: asyncio.Task | None = None
        self.closed_why = "was closed"


class PrefillCaller:
    """Prefill calls to one worker, multiplexed over one stream (see the module docstring)."""

    def __init__(self, stub: Any, address: str = "") -> None:
        self._stub = stub  # pb2_grpc.PrefillWorkerStub on a grpc.aio channel
        self.address = address
        self._stream: _Stream | None = None
        self._ids = itertools.count(1)
        self._write_lock = asyncio.Lock()
        self._unary_until = 0.0  # time.monotonic(); math.inf: the worker has no PrefillStream
        self._background: set[asyncio.Task] = set()
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
        fut = asyncio.get_running_loop().create_future()
        msg = pb2.PrefillCall(call_id=call_id, request=request, timeout_ms=max(1, math.ceil(timeout * 1000)))
        stream = await self._send(call_id, fut, msg)
        on_stream = True
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"prefill did not answer within {timeout:.1f}s"
            ) from None
        except _NoStream:
            on_stream = False  # never ran there; prefill() calls it unary
            raise
        finally:
            if on_stream:
                self._count(record)
            if stream.pending.pop(call_id, None) is not None:
                # Given up (timeout, or our caller was cancelled): the worker frees its KV.
                self._spawn(self._cancel(stream, call_id))

    def _count(self, record: Callable[[str], None] | None) -> None:
        self.stream_calls += 1
        if record is not None:
            record("stream")

    async def _send(self, call_id: int, fut: asyncio.Future, msg: pb2.PrefillCall) -> _Stream:
        """Write the call on the open stream (opening one first); a stream found broken before
        the call went out is replaced once."""
        last = "no stream"
        for _ in range(2):
            if time.monotonic() < self._unary_until:
                raise _NoStream()
            stream = self._stream or self._open()
            stream.pending[call_id] = fut
            try:
                async with self._write_lock:
                    await stream.call.write(msg)
                return stream
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
                stream.pending.pop(call_id, None)
                if self._stream is stream:
                    self._stream = None
                if isinstance(e, grpc.aio.AioRpcError):
                    if means_no_stream(e.code(), e.details() or "", stream.answered):
                        self._no_stream(e)
                        raise _NoStream() from None
                    last = f"{e.code().name} {e.details()}"
                else:
                    last = str(e) or "stream already finished"
        raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"prefill stream to {self.address} broke: {last}")

    def _open(self) -> _Stream:
        stream = _Stream(self._stub.PrefillStream())
        stream.reader = asyncio.get_running_loop().create_task(self._read(stream))
        self._stream = stream
        return stream

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
            error = rpc_error(
                grpc.StatusCode.UNAVAILABLE, f"prefill stream to {self.address} {stream.closed_why}"
            )
            raise
        finally:
            if self._stream is stream:
                self._stream = None
            if error is None:
                error = rpc_error(grpc.StatusCode.UNAVAILABLE, f"prefill stream to {self.address} ended")
            for fut in stream.pending.values():
                if not fut.done():
                    fut.set_exception(error)
            stream.pending.clear()

    def _no_stream(self, e: grpc.aio.AioRpcError) -> None:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            self._unary_until = math.inf
            log.warning(
                "prefill worker %s has no PrefillStream (older version?): calling it unary", self.address
            )
        else:
            self._unary_until = time.monotonic() + FALLBACK_S
            log.warning(
                "prefill worker %s: %s; calling it unary for %.0fs", self.address, e.details(), FALLBACK_S
            )

    async def _cancel(self, stream: _Stream, call_id: int) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, asyncio.CancelledError):
            async with self._write_lock:
                await stream.call.write(pb2.PrefillCall(call_id=call_id, cancel=True))

    def reset(self, why: str) -> None:
        """Break the open stream now (say, the worker stopped answering Health): calls in flight
        on it fail UNAVAILABLE at once instead of at their deadline."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.closed_why = f"was reset: {why}"
            stream.call.cancel()

    async def close(self) -> None:
        """Half-close the stream: calls in flight still get their replies, then it ends."""
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                async with self._write_lock:
                    await stream.call.done_writing()

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
