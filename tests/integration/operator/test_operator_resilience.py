"""The operator under the chart's RBAC, across restarts, and silent on a no-op resync."""

from __future__ import annotations

import time

import pytest
from baton_dev.sandbox import procs
from baton_dev.sandbox.operator_proc import start_operator, stop_operator
from operator_helpers import (
    READY_TIMEOUT_S,
    RESYNC_SECONDS,
    apply,
    children,
    get,
    is_ready,
    metric,
    pods,
    tiny_pool,
)
from polling import wait_until

pytestmark = pytest.mark.sandbox

SA = "system:serviceaccount:baton-system:baton-operator"


def can_i(sandbox, verb, resource, namespace):
    proc = sandbox.kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as={SA}", check=False)
    return proc.stdout.strip() == "yes"


def test_operator_runs_under_the_charts_least_privilege_rbac(sandbox, operator_process, namespace):
    # the process authenticates as the chart's ServiceAccount, not as admin
    kubeconfig = operator_process.kubeconfig.read_text()
    assert "system:serviceaccount:baton-system:baton-operator" in kubeconfig or "token:" in kubeconfig
    who = sandbox.kubectl(
        "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=operator_process.kubeconfig
    )
    assert who.stdout.strip() == SA
    assert can_i(sandbox, "patch", "statefulsets.apps", namespace)
    assert can_i(sandbox, "patch", "inferencepools.baton.dev/status", namespace)
    # spec.model.cache: the pool's claim, deleted when the cache is turned off.
    assert can_i(sandbox, "delete", "persistentvolumeclaims", namespace)
    for verb, resource in [
        ("create", "pods"),
        ("delete", "deployments.apps"),
        # It reads and writes only its pools' TLS Secrets by name: it may not list, watch or
        # delete Secrets.
        ("list", "secrets"),
        ("watch", "secrets"),
        ("delete", "secrets"),
        ("delete", "inferencepools.baton.dev"),
        # Claims only: volumes are the cluster's (or its provisioner's).
        ("create", "persistentvolumes"),
    ]:
        assert not can_i(sandbox, verb, resource, namespace), f"operator may {verb} {resource}"
    apply(sandbox, tiny_pool("p", namespace))
    wait_until(
        lambda: is_ready(sandbox, namespace, "p"),
        timeout=READY_TIMEOUT_S,
        what="pool p Ready under the chart's RBAC",
        interval=0.25,
    )
    assert "Forbidden" not in operator_process.log_tail(200)


def test_operator_noop_resync_writes_nothing(sandbox, operator_process, namespace):
    # A second operator watching only this namespace, so its write counter sees this pool alone (the
    # shared sandbox holds other tests' pools); the session operator reconciles it too.
    (port,) = procs.free_ports(1)
    args = ["-n", namespace, "--standalone", f"--resync-seconds={RESYNC_SECONDS}", f"--metrics-port={port}"]
    own = start_operator(sandbox, args=args, name="operator-noop")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        apply(sandbox, tiny_pool("p", namespace))
        wait_until(
            lambda: is_ready(sandbox, namespace, "p"),
            timeout=READY_TIMEOUT_S,
            what="pool p Ready",
            interval=0.25,
        )
        kinds = "inferencepools,statefulsets,deployments,services,configmaps,poddisruptionbudgets"

        def versions():
            items = sandbox.kubectl_json("get", kinds, "-n", namespace)["items"]
            return {(i["kind"], i["metadata"]["name"]): i["metadata"]["resourceVersion"] for i in items}

        def writes():
            return metric(url, "baton_operator_api_writes_total")

        def reconciles():
            return metric(url, "baton_operator_reconciles_total", result="ok")

        def quiet_resync_window():
            # a whole resync period in which the pool was reconciled again and nothing was written
            w0, r0, v0, t0 = writes(), reconciles(), versions(), time.monotonic()
            wait_until(
                lambda: time.monotonic() - t0 > RESYNC_SECONDS + 1 and reconciles() >= r0 + 1,
                timeout=RESYNC_SECONDS * 4,
                what="a resync",
                interval=0.5,
            )
            return writes() == w0 and versions() == v0

        # The first window may still see the last readiness update; a no-op resync must then be silent.
        wait_until(quiet_resync_window, timeout=60, what="a resync period without API writes", interval=0)
        assert reconciles() >= 2  # it did look at the pool, again and again, and wrote nothing
    finally:
        stop_operator(sandbox, own)


def test_operator_restart_mid_reconcile_converges(sandbox, operator_process, namespace):
    apply(sandbox, tiny_pool("p", namespace, decode={"replicas": 2}))
    # kill the operator as soon as it has started creating children (mid-reconcile)
    wait_until(lambda: children(sandbox, namespace, "p"), timeout=30, what="first children", interval=0.05)
    operator_process.restart(kill=True)
    wait_until(
        lambda: is_ready(sandbox, namespace, "p"),
        timeout=READY_TIMEOUT_S,
        what="pool p Ready after the restart",
        interval=0.25,
    )
    assert len(children(sandbox, namespace, "p")["StatefulSet"]) == 1
    live = [
        p for p in pods(sandbox, namespace, "baton.dev/pool=p") if not p["metadata"].get("deletionTimestamp")
    ]
    assert sorted(p["metadata"]["labels"]["baton.dev/role"] for p in live) == [
        "decode",
        "decode",
        "prefill",
        "router",
    ]
    # a graceful stop (SIGTERM) hands the lease over: the next process leads within seconds
    t0 = time.monotonic()
    operator_process.restart()
    apply(sandbox, tiny_pool("p", namespace, decode={"replicas": 1}))
    wait_until(
        lambda: get(sandbox, "deployment", namespace, "p-decode")["spec"]["replicas"] == 1,
        timeout=30,
        what="update after restart",
        interval=0.25,
    )
    assert time.monotonic() - t0 < 30
