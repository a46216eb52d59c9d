"""The tests' one polling helper: wait until a predicate holds, or fail saying what was awaited.

Importable as ``polling`` from tests/ and e2e/ (pyproject's pytest ``pythonpath`` puts tests/ on
sys.path). An exception from the predicate counts as "not yet" (a transient kubectl or gRPC
failure is retried until the timeout) and is reported when time runs out, except AssertionError:
a predicate raises that to fail at once (e.g. the process it waits for has exited).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _poll(pred: Callable[[], T]) -> tuple[T | None, BaseException | None]:
    try:
        return pred(), None
    except AssertionError:
        raise
    except Exception as exc:  # noqa: BLE001 - retried until the timeout, then reported
        return None, exc


def _timed_out(timeout: float, what: str, last: object, error: BaseException | None) -> AssertionError:
    got = f"last error: {error!r}" if error is not None else f"last value: {last!r}"
    return AssertionError(f"timed out after {timeout:g} s waiting for {what} ({got})")


def wait_until(pred: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``pred`` every ``interval`` s until it returns something truthy, and return that.

    After ``timeout`` s raises AssertionError naming ``what`` and the last value or exception
    (chained as the cause).
    """
    deadline = time.monotonic() + timeout
    while True:
        value, error = _poll(pred)
        if error is None and value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, value, error) from error
        time.sleep(interval)


async def wait_until_async(pred: Callable[[], T], *, timeout: float, what: str, interval: float = 0.01) -> T:
    """``wait_until`` from inside an event loop: sleeps with ``asyncio.sleep`` between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value, error = _poll(pred)
        if error is None and value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, value, error) from error
        await asyncio.sleep(interval)
