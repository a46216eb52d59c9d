"""Fixtures of the router tests. Each test module starts its own `baton up` stack (module scope,
to keep the runtime low); teardown sends SIGTERM and asserts every process it started is gone."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import pytest
from router_stack import LocalStack


@pytest.fixture(scope="module")
def stack_factory() -> Iterator[Callable[..., LocalStack]]:
    """Start stacks with `stack_factory(*baton_up_args)`; all are stopped (and checked) at module end."""
    stacks: list[LocalStack] = []

    def start(*args: str, stop_signal: int = signal.SIGTERM) -> LocalStack:
        s = LocalStack(*args, stop_signal=stop_signal)
        stacks.append(s)
        return s

    yield start
    for s in stacks:
        s.stop()
