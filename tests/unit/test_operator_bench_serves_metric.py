"""`serves_metric`: what the operator bench and tests wait on before they count reconciles."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from baton_dev.bench.operator_pools import serves_metric
from prometheus_client import CollectorRegistry, Counter, start_http_server


@pytest.fixture()
def endpoint() -> Iterator[tuple[str, CollectorRegistry]]:
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics", registry
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_serves_metric_needs_the_metric_declared_not_just_an_answer(
    endpoint: tuple[str, CollectorRegistry],
) -> None:
    url, registry = endpoint
    # Something answers on the port, without the operator's metrics: not the process waited for.
    assert not serves_metric(url, "baton_operator_reconciles_total")
    # The operator's counter has labels: declared before its first sample, so no reconcile is needed.
    Counter("baton_operator_reconciles", "Reconciles", ["result"], registry=registry)
    assert serves_metric(url, "baton_operator_reconciles_total")
    assert not serves_metric(url, "baton_operator_reconciles")  # the exposed name, exactly
