"""A worker says which KV data path it runs, and whether `--kv-backend auto` fell back to gRPC."""

from __future__ import annotations

import pytest
from baton_worker.server.metrics import LoadSnapshot, WorkerMetrics
from prometheus_client import generate_latest

SNAP = LoadSnapshot(
    queue_depth=0, running=0, free_blocks=1, total_blocks=1, ready=True, draining=False, freed={}
)


@pytest.mark.parametrize(
    ("requested", "running", "fallback", "flag"),
    [("auto", "grpc", True, "1.0"), ("auto", "nixl", False, "0.0"), ("grpc", "grpc", False, "0.0")],
)
def test_kv_backend_metrics(requested: str, running: str, fallback: bool, flag: str) -> None:
    m = WorkerMetrics("decode", lambda: SNAP)
    m.kv_backend(requested, running, fallback)
    text = generate_latest(m.registry).decode()
    assert f'baton_worker_kv_backend{{backend="{running}",requested="{requested}",role="decode"}} 1.0' in text
    assert f'baton_worker_kv_backend_fallback{{role="decode"}} {flag}' in text
