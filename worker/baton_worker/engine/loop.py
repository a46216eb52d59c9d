"""A background thread that drives a :class:`DecodeEngine` and streams outputs per request.

Servers call :meth:`EngineLoop.submit` (from any thread or from an asyncio task) and consume the
returned :class:`RequestStream` with ``async for`` or :meth:`RequestStream.get`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any

from baton_worker.engine.decode import DecodeEngine
from baton_worker.engine.types import EngineError, EngineRequest, RequestOutput

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.05
_BLOCKED_WAIT_S = 0.01


class EngineFailedError(EngineError):
    """The engine loop failed while this request was in it; ``__cause__`` holds the reason."""


class RequestStream:
    """The outputs of one request, in order, ending with the one whose ``finished`` is True.

    Iterate it with ``async for`` when it was submitted from a running event loop, otherwise
    call :meth:`get`. An engine failure is raised as :class:`EngineFailedError`.
    """

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop | None) -> None:
        self.request_id = request_id
        self._loop = loop
        self._aq: asyncio.Queue[Any] | None = asyncio.Queue() if loop is not None else None
        self._q: queue.Queue[Any] = queue.Queue()
        self.finished = False

    def _put(self, item: RequestOutput | BaseException) -> None:
        if self._loop is not None and self._aq is not None:
            try:
                self._loop.call_soon_threadsafe(self._aq.put_nowait, item)
            except RuntimeError:  # the consumer's event loop is closed: nobody is listening
                pass
        else:
            self._q.put(item)

    def _unwrap(self, item: RequestOutput | BaseException) -> RequestOutput:
        if isinstance(item, BaseException):
            self.finished = True
            raise EngineFailedError(f"request {self.request_id!r}: engine failed: {item}") from item
        if item.finished:
            self.finished = True
        return item

    def get(self, timeout: float) -> RequestOutput:
        """The next output (blocking up to ``timeout`` seconds; ``queue.Empty`` on timeout)."""
        if self._aq is not None:
            raise RuntimeError("this stream was submitted from an event loop: use `async for`")
        return self._unwrap(self._q.get(timeout=timeout))

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        if self._aq is None:
            item = await asyncio.to_thread(self._q.get)
        else:
            item = await self._aq.get()
        return self._unwrap(item)


class EngineLoop:
    """Runs ``engine.step()`` on a daemon thread whenever there is work."""

    def __init__(self, engine: DecodeEngine, name: str = "baton-decode-engine") -> None:
        self.engine = engine
        self._streams: dict[str, RequestStream] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.steps = 0

    def start(self) -> EngineLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (in-flight requests are aborted) and wait up to ``timeout`` seconds."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, request: EngineRequest) -> RequestStream:
        """Add ``request`` to the engine; raises its typed validation errors at once.

        Called inside a running event loop, the stream is consumed with ``async for``."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        stream = RequestStream(request.request_id, loop)
        with self._lock:
            self._streams[request.request_id] = stream
        try:
            self.engine.add_request(request)
        except Exception:
            with self._lock:
                self._streams.pop(request.request_id, None)
            raise
        self._wake.set()
        return stream

    def abort(self, request_id: str) -> bool:
        """Abort a request (blocks are freed before this returns; its stream ends with "abort")."""
        found = self.engine.abort(request_id)
        self._wake.set()
        return found

    async def abort_async(self, request_id: str) -> bool:
        """:meth:`abort` without blocking the event loop while a step finishes."""
        return await asyncio.to_thread(self.abort, request_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.engine.has_work():
                self._wake.wait(_IDLE_WAIT_S)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # fail every request loudly rather than hang them
                log.exception("engine step failed")
                self._fail_all(exc)
                continue
            self.steps += 1
            if not outputs and not self.engine.stats().running:
                # Everything waits for KV blocks held elsewhere: poll instead of spinning.
                self._wake.wait(_BLOCKED_WAIT_S)
                self._wake.clear()
            for out in outputs:
                with self._lock:
                    stream = (
                        self._streams.pop(out.request_id, None)
                        if out.finished
                        else self._streams.get(out.request_id)
                    )
                if stream is not None:
                    stream._put(out)
        self._fail_all(EngineError("engine loop stopped"))

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            streams, self._streams = self._streams, {}
        for rid, stream in streams.items():
            try:
                self.engine.abort(rid)
            except Exception:
                log.exception("abort of %s after an engine failure", rid)
            stream._put(exc)
