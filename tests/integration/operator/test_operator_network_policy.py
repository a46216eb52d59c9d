"""spec.networkPolicy on the sandbox: the policies exist with the right selectors, follow spec
changes, are refused when malformed, and go away (only the pool's own) when the pool opts out.

The sandbox's API server stores and validates NetworkPolicies; nothing here enforces them (kwok
runs no pods, and the real node's CNI bridge plugin ignores NetworkPolicy).
"""

from __future__ import annotations

import json

import pytest
from baton_operator.api import is_subset
from baton_operator.netpol import build_network_policies
from baton_operator.spec import parse_pool
from operator_helpers import (
    READY_TIMEOUT_S,
    apply,
    children,
    get,
    is_ready,
    tiny_pool,
)
from polling import wait_until

pytestmark = pytest.mark.sandbox

PROM = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
CLIENTS = {"ipBlock": {"cidr": "10.0.0.0/8"}}
POLICIES = ["p-decode", "p-prefill", "p-router"]


def _spec(sandbox, namespace: str, name: str) -> dict:
    return (get(sandbox, "networkpolicy", namespace, name) or {}).get("spec") or {}


def _policies(sandbox, namespace: str) -> list[str]:
    return children(sandbox, namespace, "p").get("NetworkPolicy", [])


def test_operator_network_policies_follow_the_spec_and_go_when_disabled(sandbox, operator_process, namespace):
    apply(sandbox, tiny_pool("p", namespace, networkPolicy={"metricsFrom": [PROM]}))
    wait_until(
        lambda: is_ready(sandbox, namespace, "p"), timeout=READY_TIMEOUT_S, what="pool p Ready", interval=0.25
    )
    assert _policies(sandbox, namespace) == POLICIES
    uid = get(sandbox, "inferencepool", namespace, "p")["metadata"]["uid"]
    pool_labels = {
        "app.kubernetes.io/name": "baton",
        "app.kubernetes.io/instance": "p",
        "baton.dev/pool": "p",
    }
    for role in ("prefill", "decode", "router"):
        policy = get(sandbox, "networkpolicy", namespace, f"p-{role}")
        (owner,) = policy["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("InferencePool", uid, True)
        spec = policy["spec"]
        assert spec["podSelector"] == {"matchLabels": {**pool_labels, "baton.dev/role": role}}
        assert spec["policyTypes"] == ["Ingress"]
    router_only, workers, metrics = _spec(sandbox, namespace, "p-decode")["ingress"]
    assert router_only["from"] == [
        {"podSelector": {"matchLabels": {**pool_labels, "baton.dev/role": "router"}}}
    ]
    assert router_only["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    (peer,) = workers["from"]
    assert peer["podSelector"]["matchLabels"] == pool_labels and "ports" not in workers
    assert peer["podSelector"]["matchExpressions"][0]["values"] == ["prefill", "decode"]
    assert metrics == {"from": [PROM], "ports": [{"port": "metrics", "protocol": "TCP"}]}
    assert "from" not in _spec(sandbox, namespace, "p-router")["ingress"][0]  # open to clients by default

    # A spec change reaches the policies; the CRD refuses a peer with nothing in it.
    apply(sandbox, tiny_pool("p", namespace, networkPolicy={"metricsFrom": [PROM], "routerFrom": [CLIENTS]}))
    wait_until(
        lambda: _spec(sandbox, namespace, "p-router")["ingress"][0].get("from") == [CLIENTS, PROM],
        timeout=30,
        what="router policy restricted to routerFrom + metricsFrom",
        interval=0.25,
    )
    # ... and what the API server stored equals what the operator builds: no write on a resync.
    pool = parse_pool(get(sandbox, "inferencepool", namespace, "p"), "unused")
    for manifest in build_network_policies(pool):
        live = get(sandbox, "networkpolicy", namespace, manifest["metadata"]["name"])
        assert is_subset({k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")}, live)
    refused = apply(sandbox, tiny_pool("p", namespace, networkPolicy={"routerFrom": [{}]}), check=False)
    assert refused.returncode != 0 and "namespaceSelector, podSelector or ipBlock" in refused.stderr

    # A policy of the user's that carries the pool's labels but no owner reference must survive.
    users = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "users-own",
            "namespace": namespace,
            "labels": {"baton.dev/pool": "p", "app.kubernetes.io/managed-by": "baton-operator"},
        },
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    sandbox.kubectl("apply", "-f", "-", input=json.dumps(users))
    apply(sandbox, tiny_pool("p", namespace, networkPolicy={"enabled": False}))
    wait_until(
        lambda: _policies(sandbox, namespace) == ["users-own"],
        timeout=30,
        what="the pool's policies deleted",
        interval=0.25,
    )
    events = sandbox.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=p"
    )
    deleted = [e["message"] for e in events["items"] if e["reason"] == "Deleted"]
    assert deleted and all(f"NetworkPolicy/{name}" in " ".join(deleted) for name in POLICIES)
    wait_until(
        lambda: is_ready(sandbox, namespace, "p"),
        timeout=READY_TIMEOUT_S,
        what="pool p still Ready",
        interval=0.25,
    )

    # Back on: re-created.
    apply(sandbox, tiny_pool("p", namespace))
    wait_until(
        lambda: _policies(sandbox, namespace) == [*POLICIES, "users-own"],
        timeout=30,
        what="policies re-created",
        interval=0.25,
    )
