"""A worker's lifecycle: loading -> ready -> draining, and the requests in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class NotAccepting(Exception):
    """The worker is loading or draining and takes no new requests."""


class Lifecycle:
    """Thread-safe readiness and in-flight accounting for graceful drain."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._loaded = False
        self._draining = False
        self._inflight = 0

    def set_loaded(self) -> None:
        with self._cond:
            self._loaded = True

    def start_drain(self) -> None:
        """Readiness drops at once; new requests are refused; running ones may finish."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def inflight(self) -> int:
        return self._inflight

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for /health and Health."""
        with self._cond:
            if not self._loaded:
                return False, "loading"
            if self._draining:
                return False, "draining"
            return True, "ready"

    @contextmanager
    def request(self) -> Iterator[None]:
        """Count a request in flight; raises NotAccepting when not accepting (loading/draining)."""
        with self._cond:
            if not self._loaded or self._draining:
                raise NotAccepting("draining" if self._draining else "loading")
            self._inflight += 1
        try:
            yield
        finally:
            with self._cond:
                self._inflight -= 1
                self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False when ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._inflight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
