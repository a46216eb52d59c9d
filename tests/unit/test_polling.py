"""tests/polling.py, the tests' one polling helper: returns the truthy value, retries errors, fails
naming what it waited for and what it last saw."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from polling import wait_until, wait_until_async


def test_wait_until_returns_the_first_truthy_value() -> None:
    values = iter([None, 0, [], "ready"])
    assert wait_until(lambda: next(values), timeout=5, what="a value", interval=0) == "ready"


def test_wait_until_retries_an_exception_and_names_it_when_time_runs_out() -> None:
    calls = itertools.count()

    def flaky() -> str:
        if next(calls) < 2:
            raise RuntimeError("transient")
        return "ok"

    assert wait_until(flaky, timeout=5, what="flaky", interval=0) == "ok"

    def broken() -> None:
        raise RuntimeError("still down")

    with pytest.raises(
        AssertionError, match=r"waiting for the server \(last error: RuntimeError\('still down'\)"
    ):
        wait_until(broken, timeout=0.05, what="the server", interval=0.01)


def test_wait_until_names_the_last_value() -> None:
    with pytest.raises(
        AssertionError, match=r"timed out after 0.05 s waiting for 3 pods \(last value: \[\]\)"
    ):
        wait_until(lambda: [], timeout=0.05, what="3 pods", interval=0.01)


def test_an_assertion_in_the_predicate_fails_at_once() -> None:
    calls = itertools.count()

    def exited() -> None:
        next(calls)
        raise AssertionError("the process exited")

    with pytest.raises(AssertionError, match="the process exited"):
        wait_until(exited, timeout=60, what="never", interval=0.01)
    assert next(calls) == 1


def test_wait_until_async_polls_without_blocking_the_loop() -> None:
    async def main() -> int:
        seen: list[int] = []

        async def tick() -> None:
            for i in range(3):
                await asyncio.sleep(0.01)
                seen.append(i)

        task = asyncio.create_task(tick())
        got = await wait_until_async(lambda: len(seen) == 3 and len(seen), timeout=5, what="3 ticks")
        await task
        return got

    assert asyncio.run(main()) == 3
    with pytest.raises(AssertionError, match="waiting for nothing"):
        asyncio.run(wait_until_async(lambda: False, timeout=0.05, what="nothing"))
