"""Pure builders of a pool's NetworkPolicies (``spec.networkPolicy``, on unless ``enabled: false``).

One policy per role, named and labelled like the role's Service and PodDisruptionBudget, each
selecting that role's pods and listing the only ingress they accept (egress is not restricted):

- workers (prefill, decode): the ``grpc`` port from the pool's routers; every port from the
  pool's other workers; the ``metrics`` port from ``metricsFrom`` (default: from anywhere);
- router: its ``http`` port (the OpenAI API, /health and /metrics) from ``routerFrom`` plus
  ``metricsFrom`` (default: from anywhere).

Ports are named (the containers' port names), so a change of port numbers needs no new policy.
A policy only fences the pods when the cluster's network plugin enforces NetworkPolicy (Calico,
Cilium, ...); the plain CNI bridge plugin ignores them.
"""

from __future__ import annotations

from typing import Any

from baton_operator.names import ROLE_LABEL, child_name, labels, metadata, selector_labels
from baton_operator.spec import ROLES, Pool

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
POLICY_ROLES = (*ROLES, "router")


def _ports(*names: str) -> list[dict[str, Any]]:
    return [{"port": name, "protocol": "TCP"} for name in names]


def _pool_workers(pool: Pool) -> dict[str, Any]:
    """Selects every prefill and decode pod of the pool (and nothing of another pool)."""
    match = {k: v for k, v in selector_labels(pool, "prefill").items() if k != ROLE_LABEL}
    return {
        "podSelector": {
            "matchLabels": match,
            "matchExpressions": [{"key": ROLE_LABEL, "operator": "In", "values": list(ROLES)}],
        }
    }


def _from(peers: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """The ``from`` of a rule: absent (every source) when no peer is given."""
    return {"from": [dict(p) for p in peers]} if peers else {}


def _worker_ingress(pool: Pool) -> list[dict[str, Any]]:
    metrics_from = pool.spec.network_policy.metrics_from
    return [
        # Prefill, Generate, Health, Cancel: the router is the only client of the serving port.
        {
            "from": [{"podSelector": {"matchLabels": selector_labels(pool, "router")}}],
            "ports": _ports("grpc"),
        },
        # The KV handoff between the pool's workers, both ways, on every port: the decode side
        # calls GetAgentMetadata/PullKv/Release on the prefill side's gRPC port, but tensor-parallel
        # ranks other than 0 serve their KV shards on ports bound to :0, and NIXL/UCX opens
        # connections on ephemeral TCP ports (and the prefill side answers a READ's notification),
        # none of which a policy can name in advance.
        {"from": [_pool_workers(pool)]},
        # Prometheus (or whoever metricsFrom names) scrapes /metrics; the kubelet's probes come
        # from the node, which Calico and Cilium let through by default.
        {**_from(metrics_from), "ports": _ports("metrics")},
    ]


def _router_ingress(pool: Pool) -> list[dict[str, Any]]:
    policy = pool.spec.network_policy
    # /metrics shares the http port with the API, so a port cannot tell scrapers from clients:
    # with routerFrom set, metricsFrom's peers are let in too (they need /metrics), nobody else.
    peers = (*policy.router_from, *policy.metrics_from) if policy.router_from else ()
    return [{**_from(peers), "ports": _ports("http")}]


def build_network_policy(pool: Pool, role: str) -> dict[str, Any]:
    """The NetworkPolicy of one role's pods (``prefill``, ``decode`` or ``router``)."""
    ingress = _router_ingress(pool) if role == "router" else _worker_ingress(pool)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata(pool, child_name(pool, role), labels(pool, role)),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(pool, role)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def build_network_policies(pool: Pool) -> list[dict[str, Any]]:
    """The pool's NetworkPolicies; none with ``spec.networkPolicy.enabled: false``."""
    if not pool.spec.network_policy.enabled:
        return []
    return [build_network_policy(pool, role) for role in POLICY_ROLES]
