"""The chart's optional ServiceMonitor (operator) and PodMonitor (pool pods), rendered with helm template."""

from __future__ import annotations

import subprocess

import pytest
from baton_operator import builders
from baton_operator.names import labels
from baton_operator.spec import parse_pool
from test_chart_baton import CHART, KUBE_VERSION, by_kind, helm, render

MONITOR_KINDS = ("ServiceMonitor", "PodMonitor")


def pool():
    body = {"metadata": {"name": "llama", "namespace": "ml"}, "spec": {"model": {"source": "hf://o/m"}}}
    return parse_pool(body, "img")


def selects(selector: dict, pod_labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, In/NotIn/Exists) selects these labels."""
    if any(pod_labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = pod_labels.get(expr["key"]), expr["operator"]
        if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr["values"]):
            return False
        if op == "Exists" and value is None:
            return False
    return True


def test_monitors_are_off_by_default():
    docs = render()
    assert not [d for d in docs if d["kind"] in MONITOR_KINDS]
    assert by_kind(docs, "Service") == []


def test_service_monitor_scrapes_the_operators_metrics_port():
    docs = render(
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.serviceMonitor.labels.release=kube-prometheus-stack",
        "monitoring.serviceMonitor.interval=20s",
    )
    (service,) = by_kind(docs, "Service")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    (deploy,) = by_kind(docs, "Deployment")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["baton-system"]}
    (port,) = service["spec"]["ports"]
    container_ports = {
        p["name"]: p["containerPort"] for p in deploy["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert port["targetPort"] == "metrics" and port["port"] == container_ports["metrics"] == 9090
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "20s"}


def test_service_monitor_needs_the_operator_deployment():
    docs = render("monitoring.serviceMonitor.enabled=true", "operator.enabled=false")
    assert by_kind(docs, "ServiceMonitor") == [] and by_kind(docs, "Service") == []


@pytest.mark.parametrize(
    ("sets", "namespaces"),
    [
        ((), {"any": True}),
        (("rbac.scope=namespace",), {"matchNames": ["baton-system"]}),
        (("rbac.scope=namespace", "rbac.watchNamespaces={ml,research}"), {"matchNames": ["ml", "research"]}),
    ],
)
def test_pod_monitor_watches_the_operators_namespaces(sets, namespaces):
    (monitor,) = by_kind(render("monitoring.podMonitor.enabled=true", *sets), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == namespaces


def test_pod_monitor_selects_worker_and_router_pods_on_their_metrics_ports():
    docs = render(
        "monitoring.podMonitor.enabled=true",
        "monitoring.podMonitor.labels.release=prom",
        "monitoring.podMonitor.scrapeTimeout=10s",
    )
    (monitor,) = by_kind(docs, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    spec = monitor["spec"]
    p = pool()
    # The operator's labels of each role's pods (names.py), and the ports its builders name.
    templates = {
        "prefill": builders.build_prefill_statefulset(p),
        "decode": builders.build_decode_deployment(p),
        "router": builders.build_router_deployment(p),
    }
    endpoints = {e["port"]: e for e in spec["podMetricsEndpoints"]}
    for role, workload in templates.items():
        template = workload["spec"]["template"]
        assert template["metadata"]["labels"] == labels(p, role)
        assert selects(spec["selector"], template["metadata"]["labels"]), role
        ports = {port["name"] for port in template["spec"]["containers"][0]["ports"]}
        assert len(ports & set(endpoints)) == 1, role  # scraped once
    assert not selects(spec["selector"], labels(p, "pool"))  # the ConfigMap's role
    (operator,) = by_kind(docs, "Deployment")
    assert not selects(spec["selector"], operator["spec"]["template"]["metadata"]["labels"])
    for endpoint in endpoints.values():
        assert (
            endpoint["path"] == "/metrics"
            and endpoint["interval"] == "15s"
            and endpoint["scrapeTimeout"] == "10s"
        )
        assert {
            "sourceLabels": ["__meta_kubernetes_pod_label_baton_dev_pool"],
            "targetLabel": "pool",
        } in endpoint["relabelings"]
    assert builders.WORKER_METRICS_PORT == 8081


@pytest.mark.parametrize(
    "bad",
    [
        "monitoring.podMonitor.interval=often",
        "monitoring.podMonitor.interval=",
        "monitoring.serviceMonitor.scrapeTimeout=5 seconds",
        "monitoring.serviceMonitor.enabled=yes",
        "monitoring.podMonitor.colour=blue",
    ],
)
def test_values_schema_rejects_bad_monitoring_values(bad):
    args = [
        helm(),
        "template",
        "baton",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set-string" if "yes" in bad else "--set",
        bad,
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "/monitoring/" in proc.stderr, proc.stderr
