"""start_operator/stop_operator: the background `baton operator` runs as the chart's ServiceAccount."""

from __future__ import annotations

import urllib.request

import pytest
from baton_dev.sandbox import procs
from baton_dev.sandbox.cluster import load_state
from baton_dev.sandbox.handle import Sandbox
from baton_dev.sandbox.operator_proc import (
    NAMESPACE,
    SERVICE_ACCOUNT,
    find_chart,
    running_operators,
    start_operator,
    stop_operator,
)
from polling import wait_until

pytestmark = pytest.mark.sandbox


def _alive(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_operator_runs_under_the_chart_service_account_and_stops(sandbox: Sandbox) -> None:
    assert find_chart() is not None, "charts/baton/Chart.yaml is missing"
    # The chart created the ServiceAccount; the operator's kubeconfig authenticates as it.
    who = sandbox.kubectl(
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
        kubeconfig=sandbox.kubeconfig_for_service_account(NAMESPACE, SERVICE_ACCOUNT),
    )
    assert who.stdout == f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
    port = procs.free_ports(1)[0]
    op = start_operator(
        sandbox,
        args=["--standalone", f"--liveness=http://127.0.0.1:{port}/healthz"],
        name="operator-proc-test",
    )
    try:
        assert op.running()
        state = load_state(sandbox.layout)
        assert state is not None and op.pid in [p.pid for p in state.extra]
        assert running_operators(sandbox, name="operator-proc-test")[0].pid == op.pid
        wait_until(lambda: _alive(port), timeout=60, what="the operator's liveness endpoint", interval=0.3)
        assert op.running(), procs.tail(op.log)
    finally:
        assert stop_operator(sandbox, op)
    assert not op.running()
    assert running_operators(sandbox, name="operator-proc-test") == []
