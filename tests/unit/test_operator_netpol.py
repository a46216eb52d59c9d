"""spec.networkPolicy: parsing, the NetworkPolicy builders (table-driven) and pruning when a pool opts out."""

from __future__ import annotations

from typing import Any

import pytest
from baton_operator import builders, netpol
from baton_operator.api import ApiError
from baton_operator.reconcile import Outcome, prune_children
from baton_operator.spec import Pool, SpecError, parse_pool
from baton_operator.spec_network import parse_network_policy

PROM = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
APPS = {"namespaceSelector": {"matchLabels": {"team": "apps"}}, "podSelector": {}}
LB = {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
POOL_LABELS = {
    "app.kubernetes.io/name": "baton",
    "app.kubernetes.io/instance": "demo",
    "baton.dev/pool": "demo",
}
FROM_ROUTERS = {
    "from": [{"podSelector": {"matchLabels": {**POOL_LABELS, "baton.dev/role": "router"}}}],
    "ports": [{"port": "grpc", "protocol": "TCP"}],
}
FROM_WORKERS = {
    "from": [
        {
            "podSelector": {
                "matchLabels": POOL_LABELS,
                "matchExpressions": [
                    {"key": "baton.dev/role", "operator": "In", "values": ["prefill", "decode"]}
                ],
            }
        }
    ]
}
METRICS = [{"port": "metrics", "protocol": "TCP"}]
HTTP = [{"port": "http", "protocol": "TCP"}]


def make_pool(network: dict[str, Any] | None = None, uid: str = "u-1") -> Pool:
    spec: dict[str, Any] = {"model": {"source": "builtin://tiny"}}
    if network is not None:
        spec["networkPolicy"] = network
    return parse_pool({"metadata": {"name": "demo", "namespace": "ml", "uid": uid}, "spec": spec}, "img")


def policies(pool: Pool) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in netpol.build_network_policies(pool)}


@pytest.mark.parametrize(
    ("network", "worker_ingress", "router_ingress"),
    [
        pytest.param(None, [FROM_ROUTERS, FROM_WORKERS, {"ports": METRICS}], [{"ports": HTTP}], id="default"),
        pytest.param(
            {"metricsFrom": [PROM]},
            [FROM_ROUTERS, FROM_WORKERS, {"from": [PROM], "ports": METRICS}],
            [{"ports": HTTP}],  # metricsFrom alone leaves the router open: clients need it
            id="metricsFrom",
        ),
        pytest.param(
            {"routerFrom": [APPS, LB]},
            [FROM_ROUTERS, FROM_WORKERS, {"ports": METRICS}],
            [{"from": [APPS, LB], "ports": HTTP}],
            id="routerFrom",
        ),
        pytest.param(
            {"routerFrom": [APPS], "metricsFrom": [PROM]},
            [FROM_ROUTERS, FROM_WORKERS, {"from": [PROM], "ports": METRICS}],
            [{"from": [APPS, PROM], "ports": HTTP}],  # /metrics is on the router's http port
            id="both",
        ),
    ],
)
def test_network_policies(network, worker_ingress, router_ingress):
    built = policies(make_pool(network))
    assert list(built) == ["demo-prefill", "demo-decode", "demo-router"]
    for role in ("prefill", "decode", "router"):
        policy = built[f"demo-{role}"]
        assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
        assert policy["metadata"]["labels"]["baton.dev/role"] == role
        assert policy["metadata"]["ownerReferences"][0]["uid"] == "u-1"
        spec = policy["spec"]
        assert spec["podSelector"] == {"matchLabels": {**POOL_LABELS, "baton.dev/role": role}}
        assert spec["policyTypes"] == ["Ingress"]  # egress stays open (model downloads, the API server)
        assert spec["ingress"] == (router_ingress if role == "router" else worker_ingress)


def test_disabled_builds_no_policy_and_children_follow():
    assert netpol.build_network_policies(make_pool({"enabled": False})) == []
    kinds = [c["kind"] for c in builders.build_children(make_pool({"enabled": False}))]
    assert "NetworkPolicy" not in kinds
    kinds = [c["kind"] for c in builders.build_children(make_pool())]
    assert kinds.count("NetworkPolicy") == 3
    # before the workloads, so their pods are fenced from the start
    assert kinds.index("NetworkPolicy") < kinds.index("StatefulSet")


def test_ports_are_the_containers_port_names():
    pool = make_pool()
    named = {
        role: {p["name"] for p in c["spec"]["template"]["spec"]["containers"][0]["ports"]}
        for role, c in (
            ("prefill", builders.build_prefill_statefulset(pool)),
            ("router", builders.build_router_deployment(pool)),
        )
    }
    worker_ports = {
        p["port"] for r in policies(pool)["demo-prefill"]["spec"]["ingress"] for p in r.get("ports", [])
    }
    router_ports = {p["port"] for r in policies(pool)["demo-router"]["spec"]["ingress"] for p in r["ports"]}
    assert worker_ports == named["prefill"] == {"grpc", "metrics"}
    assert router_ports == named["router"] == {"http"}


@pytest.mark.parametrize(
    ("raw", "enabled", "metrics_from", "router_from"),
    [
        ({}, True, (), ()),
        ({"enabled": False}, False, (), ()),
        ({"metricsFrom": [PROM]}, True, (PROM,), ()),
        # what the API server stores: empty maps and lists left out, {} kept (it selects everything)
        (
            {"routerFrom": [{"namespaceSelector": {"matchLabels": {}, "matchExpressions": []}}]},
            True,
            (),
            ({"namespaceSelector": {}},),
        ),
        (
            {
                "routerFrom": [
                    {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": []}]}}
                ]
            },
            True,
            (),
            ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}},),
        ),
        (
            {"routerFrom": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": []}}]},
            True,
            (),
            ({"ipBlock": {"cidr": "0.0.0.0/0"}},),
        ),
    ],
)
def test_parse_network_policy(raw, enabled, metrics_from, router_from):
    parsed = parse_network_policy({"networkPolicy": raw})
    assert (parsed.enabled, parsed.metrics_from, parsed.router_from) == (enabled, metrics_from, router_from)


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ("yes", "spec.networkPolicy", "must be an object"),
        ({"enabled": "no"}, "spec.networkPolicy.enabled", "true or false"),
        ({"metricsFrom": []}, "spec.networkPolicy.metricsFrom", "must not be empty"),
        ({"metricsFrom": PROM}, "spec.networkPolicy.metricsFrom", "must be a list"),
        (
            {"routerFrom": [{}]},
            "spec.networkPolicy.routerFrom[0]",
            "namespaceSelector, podSelector or ipBlock",
        ),
        (
            {"routerFrom": [{**LB, "podSelector": {}}]},
            "spec.networkPolicy.routerFrom[0].ipBlock",
            "cannot be combined",
        ),
        ({"routerFrom": [{"ipBlock": {}}]}, "spec.networkPolicy.routerFrom[0].ipBlock.cidr", "is required"),
        (
            {"metricsFrom": [PROM, {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]},
            "spec.networkPolicy.metricsFrom[1].podSelector.matchExpressions[0].values",
            "must not be empty with operator In",
        ),
        (
            {"metricsFrom": [{"podSelector": {"matchLabels": {"a": 1}}}]},
            "spec.networkPolicy.metricsFrom[0].podSelector.matchLabels.a",
            "must be a string",
        ),
        ({"metricsFrom": [PROM] * 33}, "spec.networkPolicy.metricsFrom", "at most 32"),
    ],
)
def test_parse_network_policy_refuses_naming_the_field(raw, field, message):
    with pytest.raises(SpecError) as err:
        make_pool(raw)
    assert err.value.field == field and message in err.value.message


class FakeApi:
    """list/delete of NetworkPolicies; records calls."""

    def __init__(self, items: list[dict[str, Any]], fail: ApiError | None = None) -> None:
        self.items, self.fail = items, fail
        self.lists: list[str] = []
        self.deletes: list[tuple[str, str]] = []

    def list(self, kind, namespace, selector):
        self.lists.append(f"{kind.plural} {namespace} {selector}")
        return self.items

    def delete(self, kind, namespace, name, uid):
        if self.fail is not None:
            raise self.fail
        self.deletes.append((name, uid))
        return name != "demo-gone"


def live(name: str, owner_uid: str, controller: bool = True) -> dict[str, Any]:
    owner = {"kind": "InferencePool", "name": "demo", "uid": owner_uid, "controller": controller}
    return {"metadata": {"name": name, "uid": f"np-{name}", "ownerReferences": [owner]}}


def test_opted_out_pool_deletes_only_the_policies_it_controls():
    api = FakeApi(
        [
            live("demo-prefill", "u-1"),
            live("demo-gone", "u-1"),  # deleted meanwhile: 404, not reported
            live("demo-other", "u-2"),  # an earlier pool of the same name
            live("users-policy", "u-1", controller=False),
        ]
    )
    outcome = Outcome()
    assert prune_children(api, make_pool({"enabled": False}), outcome) == ""
    assert api.lists == ["networkpolicies ml baton.dev/pool=demo,app.kubernetes.io/managed-by=baton-operator"]
    assert api.deletes == [("demo-prefill", "np-demo-prefill"), ("demo-gone", "np-demo-gone")]
    assert outcome.deleted == ["NetworkPolicy/demo-prefill"]


def test_enabled_pool_prunes_nothing_and_reads_nothing():
    api = FakeApi([live("demo-prefill", "u-1")])
    assert prune_children(api, make_pool(), Outcome()) == ""
    assert api.lists == [] and api.deletes == []


def test_prune_errors():
    pool = make_pool({"enabled": False})
    forbidden = FakeApi([live("demo-router", "u-1")], ApiError(403, "DELETE", "/x", "forbidden"))
    assert prune_children(forbidden, pool, Outcome()) == "deleting NetworkPolicy/demo-router: forbidden"
    conflict = FakeApi([live("demo-router", "u-1")], ApiError(409, "DELETE", "/x", "uid precondition"))
    with pytest.raises(ApiError):
        prune_children(conflict, pool, Outcome())  # transient: the controller retries with backoff
