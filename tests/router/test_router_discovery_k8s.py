"""Discovery in Kubernetes against the real sandbox API server: the router follows a Service's
EndpointSlices (created here by hand: there is no kubelet), respecting readiness."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import httpx
import pytest
from polling import wait_until
from router_stack import start_router

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def kube() -> Iterator[tuple[object, str]]:
    """(CoreV1 + Discovery API clients, kubeconfig path) of the sandbox, in a fresh namespace."""
    from baton_dev.sandbox import cluster
    from kubernetes import client, config

    handle, started = cluster.up(log=lambda msg: print(f"[sandbox] {msg}"))
    api_client = config.new_client_from_config(config_file=str(handle.kubeconfig))
    core, disc = client.CoreV1Api(api_client), client.DiscoveryV1Api(api_client)
    ns = f"router-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    try:
        yield (core, disc, ns), str(handle.kubeconfig)
    finally:
        core.delete_namespace(ns)
        if started:
            cluster.down(handle.state_dir)


def _slice(name: str, service: str, endpoints: list[tuple[str, bool | None, bool]]) -> dict:
    eps = []
    for addr, ready, terminating in endpoints:
        cond: dict = {"terminating": terminating}
        if ready is not None:
            cond["ready"] = ready
        eps.append({"addresses": [addr], "conditions": cond})
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/service-name": service,
                # Not the endpointslice controller's: it leaves hand-made slices alone.
                "endpointslice.kubernetes.io/managed-by": "baton-tests",
            },
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}, {"name": "metrics", "port": 9000}],
    }


def test_router_follows_endpointslices_with_readiness(kube) -> None:  # type: ignore[no-untyped-def]
    (core, disc, ns), kubeconfig = kube
    for svc in ("pool-prefill", "pool-decode"):
        core.create_namespaced_service(
            ns, {"metadata": {"name": svc}, "spec": {"ports": [{"name": "grpc", "port": 50051}]}}
        )
    disc.create_namespaced_endpoint_slice(
        ns, _slice("pool-decode-a", "pool-decode", [("10.9.0.1", True, False), ("10.9.0.2", False, False)])
    )
    args = ["--prefill-service", "pool-prefill", "--decode-service", "pool-decode", "--namespace", ns]
    proc, url = start_router(*args, env={**os.environ, "KUBECONFIG": kubeconfig})
    try:

        def known(role: str) -> int:
            return httpx.get(url + "/health", timeout=5).json()[role]["known"]

        # Only the ready endpoint of the decode Service counts; the prefill Service has none.
        wait_until(
            lambda: known("decode") == 1 and known("prefill") == 0, timeout=30, what="1 ready decode endpoint"
        )
        disc.patch_namespaced_endpoint_slice(
            "pool-decode-a",
            ns,
            _slice("pool-decode-a", "pool-decode", [("10.9.0.1", True, False), ("10.9.0.2", None, False)]),
        )
        wait_until(lambda: known("decode") == 2, timeout=30, what="the second endpoint to become ready")
        disc.create_namespaced_endpoint_slice(
            ns, _slice("pool-prefill-a", "pool-prefill", [("10.9.1.1", True, False)])
        )
        wait_until(lambda: known("prefill") == 1, timeout=30, what="a prefill endpoint")
        disc.patch_namespaced_endpoint_slice(
            "pool-decode-a",
            ns,
            _slice("pool-decode-a", "pool-decode", [("10.9.0.1", True, True), ("10.9.0.2", True, False)]),
        )
        wait_until(lambda: known("decode") == 1, timeout=30, what="the terminating endpoint to leave")
        disc.delete_namespaced_endpoint_slice("pool-decode-a", ns)
        wait_until(
            lambda: known("decode") == 0, timeout=30, what="no decode endpoints after the slice is deleted"
        )
        # No usable decode worker: the router says so instead of hanging.
        assert httpx.get(url + "/health", timeout=5).status_code == 503
    finally:
        proc.terminate()
        proc.wait(timeout=30)
