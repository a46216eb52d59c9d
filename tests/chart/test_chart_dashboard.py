"""The chart's Grafana dashboard: its ConfigMap, and that every metric it reads is one the code exports."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import pytest
from baton_worker.engine.kv_pool import PrefixCacheStats
from baton_worker.router.metrics import RouterMetrics
from baton_worker.router.placement import WorkerLoad
from baton_worker.server.metrics import LoadSnapshot, WorkerMetrics
from prometheus_client import CollectorRegistry
from test_chart_baton import CHART, KUBE_VERSION, by_kind, helm, render

DASHBOARD = CHART / "dashboards" / "baton.json"
METRIC = re.compile(r"\bbaton_[a-z0-9_]+")  # e2e has a digit


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(items: list[dict]) -> Iterator[dict]:
    """Every panel, rows' nested panels included."""
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def exprs(d: dict) -> list[str]:
    out = [t["expr"] for p in panels(d["panels"]) for t in p.get("targets", [])]
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def sample_names(registry: CollectorRegistry) -> set[str]:
    return {s.name for family in registry.collect() for s in family.samples}


def exported_names() -> set[str]:
    """Sample names of the router's, a worker's and the operator's registries, every labelled metric
    exercised once so that it shows."""
    router = RouterMetrics(
        lambda: {"prefill": (1, 2, 0), "decode": (0, 1, 1)},
        lambda: 3,
        lambda: {"prefill": 4, "decode": 5},
        held=lambda: {"prefill": 1, "decode": 0},
    )
    held = WorkerLoad("decode-0", cached_tokens=16)
    router.prefix_placement("decode", held, [held])
    router.requests.labels("chat", "true").inc()
    router.errors.labels("503", "overloaded").inc()
    router.retries.labels("decode", "unreachable").inc()
    router.placements.labels("remote", "long_prompt").inc()
    router.prefill_calls.labels("stream").inc()
    names = sample_names(router.registry)

    for role in ("prefill", "decode"):
        snap = LoadSnapshot(
            queue_depth=1, running=2, free_blocks=3, total_blocks=8, ready=True, draining=False,
            freed={"notification": 1, "release": 0, "ttl": 0}, prefix=PrefixCacheStats(32, 16, 1, 2),
        )  # fmt: skip
        worker = WorkerMetrics(role, lambda snap=snap: snap)
        worker.request("ok")
        worker.transfer("nixl", 1 << 20, 0.01)
        worker.kv_backend("auto", "grpc", fallback=True)
        names |= sample_names(worker.registry)

    # The operator's counters live in the process-wide registry; collect just them.
    from baton_operator.api import WRITES
    from baton_operator.controller import RECONCILES

    RECONCILES.labels("ok")
    WRITES.labels("patch", "Deployment")
    names |= {
        s.name for metric in (RECONCILES, WRITES) for family in metric.collect() for s in family.samples
    }
    return names


def test_every_metric_the_dashboard_reads_is_exported():
    exported = exported_names()
    used = {name for e in exprs(dashboard()) for name in METRIC.findall(e)}
    assert used, "no baton_ metric found in the dashboard's expressions"
    missing = sorted(used - exported)
    assert not missing, f"the dashboard reads metrics nothing exports: {missing}"


def test_the_metric_check_catches_a_renamed_metric():
    used = set(METRIC.findall('rate(baton_requests_renamed_total{pod=~"x"}[5m])'))
    assert used == {"baton_requests_renamed_total"} and not used <= exported_names()


def test_the_dashboard_covers_what_users_read():
    d = dashboard()
    used = {name for e in exprs(d) for name in METRIC.findall(e)}
    assert {
        "baton_requests_total",
        "baton_request_errors_total",
        "baton_time_to_first_token_seconds_bucket",
        "baton_inter_token_latency_seconds_bucket",
        "baton_e2e_request_latency_seconds_bucket",
        "baton_queue_depth",
        "baton_workers",
        "baton_requests_inflight",
        "baton_prefill_placement_total",
        "baton_retries_total",
        "baton_decode_resumes_total",
        "baton_prefill_calls_total",
        "baton_kv_transfer_seconds_bucket",
        "baton_kv_transfer_bytes_bucket",
        "baton_worker_kv_transfer_bytes_total",
        "baton_worker_kv_block_usage",
        "baton_worker_queue_depth",
        "baton_worker_running",
        "baton_worker_kv_freed",
    } <= used
    assert d["uid"] == "baton" and d["title"] == "baton: disaggregated serving"
    assert d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert {"namespace", "pool"} <= variables.keys()


def test_every_panel_has_a_title_the_datasource_variable_and_a_query():
    ids = []
    for p in panels(dashboard()["panels"]):
        assert p.get("title"), p
        ids.append(p["id"])
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["fieldConfig"]["defaults"].get("unit"), p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            if "rate(" in t["expr"]:
                assert "[$__rate_interval]" in t["expr"], p["title"]
            if "histogram_quantile" in t["expr"]:
                assert re.search(r"_bucket\{.*?\}\[\$__rate_interval\]", t["expr"]), p["title"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def dashboard_config_maps(*sets: str) -> list[dict]:
    return [
        c for c in by_kind(render(*sets), "ConfigMap") if c["metadata"]["name"].endswith("grafana-dashboard")
    ]


def test_chart_ships_the_dashboard_for_the_grafana_sidecar():
    (cm,) = dashboard_config_maps()
    assert cm["metadata"]["namespace"] == "baton-system"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["app.kubernetes.io/name"] == "baton"
    assert json.loads(cm["data"]["baton.json"]) == dashboard()


def test_dashboard_label_namespace_and_metadata_are_configurable():
    (cm,) = dashboard_config_maps(
        "grafana.dashboard.labelKey=dashboards",
        "grafana.dashboard.labelValue=baton",
        "grafana.dashboard.namespace=monitoring",
        "grafana.dashboard.labels.team=ml-platform",
        "grafana.dashboard.annotations.grafana_folder=baton",
    )
    meta = cm["metadata"]
    assert meta["namespace"] == "monitoring"
    assert meta["labels"]["dashboards"] == "baton" and "grafana_dashboard" not in meta["labels"]
    assert meta["labels"]["team"] == "ml-platform"
    assert meta["annotations"] == {"grafana_folder": "baton"}


def test_dashboard_disabled_renders_no_config_map():
    assert dashboard_config_maps("grafana.dashboard.enabled=false") == []


@pytest.mark.parametrize("bad", ["grafana.dashboard.enabled=maybe", "grafana.dashboard.colour=red"])
def test_values_schema_checks_the_grafana_values(bad):
    args = [helm(), "template", "baton", str(CHART), "--kube-version", KUBE_VERSION, "--set", bad]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "grafana" in proc.stderr


def test_chart_with_the_dashboard_lints_clean():
    for sets in ([], ["--set", "grafana.dashboard.enabled=false"]):
        proc = subprocess.run(
            [helm(), "lint", "--strict", str(CHART), *sets], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "0 chart(s) failed" in proc.stdout
