"""The CRD's ``spec.networkPolicy``: the NetworkPolicies the operator creates for a pool.

Kubernetes' NetworkPolicyPeer is spelled out (a structural schema may not preserve unknown
fields), with CEL rules for what the API server would only refuse when the operator applies the
policies (a peer with nothing in it, an ipBlock next to a selector).
"""

from __future__ import annotations

from baton_operator.crd_types import S, array, boolean, label_selector, obj, string
from baton_operator.spec_network import MAX_PEERS


def peer_schema() -> S:
    """A Kubernetes NetworkPolicyPeer."""
    return obj(
        "Who may connect (Kubernetes NetworkPolicyPeer): pods matching podSelector in namespaces "
        "matching namespaceSelector (both given: ANDed; podSelector alone: the pool's namespace; "
        "namespaceSelector alone: every pod there; {} selects everything), or an ipBlock.",
        {
            "namespaceSelector": label_selector(
                "Namespaces by label, e.g. {matchLabels: {kubernetes.io/metadata.name: monitoring}}."
            ),
            "podSelector": label_selector(
                "Pods by label, e.g. {matchLabels: {app.kubernetes.io/name: prometheus}}."
            ),
            "ipBlock": obj(
                "Addresses outside the cluster's pod network (e.g. clients behind a load balancer that "
                "keeps their source address). Cannot be combined with the selectors.",
                {
                    "cidr": string("A CIDR, e.g. 10.0.0.0/8 or 2001:db8::/64.", minLength=1),
                    "except": array("CIDRs inside cidr that are not allowed.", {"type": "string"}),
                },
                required=["cidr"],
            ),
        },
        rules=[
            {
                "rule": "has(self.namespaceSelector) || has(self.podSelector) || has(self.ipBlock)",
                "message": "spec.networkPolicy: a peer sets namespaceSelector, podSelector or ipBlock",
                "reason": "FieldValueRequired",
            },
            {
                "rule": "!has(self.ipBlock) || !(has(self.namespaceSelector) || has(self.podSelector))",
                "message": "spec.networkPolicy: a peer's ipBlock cannot be combined with namespaceSelector "
                "or podSelector",
                "fieldPath": ".ipBlock",
                "reason": "FieldValueInvalid",
            },
        ],
    )


def _peers(description: str) -> S:
    return array(description, peer_schema(), minItems=1, maxItems=MAX_PEERS)


def network_policy_schema() -> S:
    """``spec.networkPolicy``: on by default; who may reach the metrics ports and the router."""
    return obj(
        "NetworkPolicies the operator creates for the pool, one per role (<pool>-prefill, <pool>-decode, "
        "<pool>-router; ingress only): the workers' grpc port accepts only the pool's routers, the "
        "workers accept each other on every port (the KV handoff: gRPC, tensor-parallel ranks' "
        "ports, NIXL/UCX's ephemeral ports), their metrics port accepts metricsFrom, the router's "
        "http port routerFrom. Enforced only where the cluster's network plugin implements "
        "NetworkPolicy (Calico, Cilium, ...).",
        {
            "enabled": boolean(
                "Create the policies; false deletes the ones the operator created for this pool.",
                default=True,
            ),
            "metricsFrom": _peers(
                "Who may scrape the workers' metrics port (8081); unset: anyone, so any Prometheus "
                "works out of the box. The router serves /metrics on its http port, so with routerFrom "
                "set these peers may reach that port too (list the operator's namespace here or in "
                "routerFrom when a role autoscales on the router's metrics)."
            ),
            "routerFrom": _peers(
                "Who may call the router's http port (the OpenAI API, /health, /metrics); unset: "
                "anyone, as a Service is by default."
            ),
        },
    )
