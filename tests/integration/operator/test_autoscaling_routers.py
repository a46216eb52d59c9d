"""The built-in autoscaler on a pool with two routers, on the sandbox: it finds the routers in the
EndpointSlices of `<pool>-router` (under the chart's RBAC), scrapes each, and counts the workers'
queues once plus what each router holds.

kwok runs no router, so the test serves two router /metrics pages itself, on this machine's
address (EndpointSlices refuse loopback ones) at two ports, and lists them in two EndpointSlices
of its own, one per router (the pool has no router pod whose slice the controller would fill).
"""

from __future__ import annotations

import json
import re
import subprocess
from urllib.parse import urlparse

import pytest
from baton_dev.queue_endpoint import QueueEndpoint
from baton_dev.sandbox import procs
from operator_helpers import get, tiny_pool
from polling import wait_until

pytestmark = pytest.mark.sandbox


def _host_ip() -> str:
    out = subprocess.run(
        ["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True
    )
    found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out.stdout)
    if not found:
        pytest.skip("no non-loopback IPv4 address here, and EndpointSlices refuse loopback ones")
    return found.group(1)


def _router_slice(namespace: str, name: str, ip: str, port: int) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": "p-router",
                "endpointslice.kubernetes.io/managed-by": "baton-tests",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
    }


def _queue_depth(sandbox, namespace: str, role: str) -> float | None:
    status = (get(sandbox, "inferencepool", namespace, "p") or {}).get("status") or {}
    return (status.get(role) or {}).get("queueDepth")


def test_autoscaler_scrapes_every_router_and_counts_the_workers_once(sandbox, operator_process, namespace):
    ip = _host_ip()
    a, b = (QueueEndpoint(host=ip, port=port) for port in procs.free_ports(2))
    try:
        # The workers hold 12 decode requests (both routers see them); a holds 2 more, b 1.
        a.set(prefill=0, decode=12 + 2)
        a.hold(prefill=0, decode=2)
        b.set(prefill=0, decode=12 + 1)
        b.hold(prefill=0, decode=1)
        for name, router in (("p-router-a", a), ("p-router-b", b)):
            port = urlparse(router.url).port or 0
            sandbox.kubectl("apply", "-f", "-", input=json.dumps(_router_slice(namespace, name, ip, port)))
        # Autoscaled, but never beyond one replica: the test reads the signal, not a scale-up.
        scaling = {"enabled": True, "minReplicas": 1, "maxReplicas": 1, "targetQueueDepth": 100}
        pool = tiny_pool(
            "p",
            namespace,
            router={"replicas": 0},
            decode={"replicas": 1, "maxBatchSize": 8, "autoscaling": scaling},
            autoscaling={"intervalSeconds": 1},
        )
        sandbox.kubectl("apply", "-f", "-", input=json.dumps(pool))
        wait_until(
            lambda: _queue_depth(sandbox, namespace, "decode") == 15,
            timeout=60,
            what="decode queueDepth 15",
            interval=0.25,
        )
        assert a.scrapes and b.scrapes  # both routers were read (the sum would say 27, one router 14 or 13)
        b.stop()  # a router that stops answering: its held requests are missing, the workers' are not
        wait_until(
            lambda: _queue_depth(sandbox, namespace, "decode") == 14,
            timeout=30,
            what="decode queueDepth 14",
            interval=0.25,
        )
        status = get(sandbox, "inferencepool", namespace, "p")["status"]
        assert status["autoscaling"]["metricsAvailable"] is True
    finally:
        a.stop()
        b.stop()
