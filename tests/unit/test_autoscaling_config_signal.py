"""Parsing of the autoscaling spec and of the queue-depth signal (pure)."""

from __future__ import annotations

import json

import pytest
from baton_operator.autoscaling import config, signal
from baton_operator.autoscaling.policy import RoleScaling

ROUTER_METRICS = """\
# HELP baton_queue_depth Requests waiting for a role.
# TYPE baton_queue_depth gauge
baton_queue_depth{role="prefill"} 12.0
baton_queue_depth{role="decode"} 3.0
# HELP baton_requests_total Requests.
# TYPE baton_requests_total counter
baton_requests_total{code="200"} 7.0
"""


def test_autoscaling_parse_router_metrics() -> None:
    assert signal.parse_queue_depths(ROUTER_METRICS) == {"prefill": 12.0, "decode": 3.0}


def test_autoscaling_parse_sums_series_of_a_role() -> None:
    text = 'baton_queue_depth{role="decode",router="a"} 2\nbaton_queue_depth{role="decode",router="b"} 5\n'
    assert signal.parse_queue_depths(text) == {"decode": 7.0}


def test_autoscaling_parse_missing_metric_is_empty() -> None:
    assert signal.parse_queue_depths("other_metric 1\n") == {}


def test_autoscaling_parse_garbage_raises() -> None:
    with pytest.raises(signal.SignalError, match="unparsable"):
        signal.parse_queue_depths("baton_queue_depth{role=prefill 1 2 3\n")


def test_autoscaling_parse_prometheus_vector() -> None:
    body = json.dumps(
        {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [
                    {"metric": {"role": "prefill"}, "value": [1.0, "9"]},
                    {"metric": {"role": "decode"}, "value": [1.0, "2.5"]},
                ],
            },
        }
    ).encode()
    assert signal.parse_prometheus_vector(body) == {"prefill": 9.0, "decode": 2.5}


@pytest.mark.parametrize(
    "body,match",
    [
        (b"<html>", "non-JSON"),
        (json.dumps({"status": "error", "error": "parse error at char 3"}).encode(), "parse error"),
        (
            json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}).encode(),
            "vector",
        ),
    ],
)
def test_autoscaling_parse_prometheus_errors(body: bytes, match: str) -> None:
    with pytest.raises(signal.SignalError, match=match):
        signal.parse_prometheus_vector(body)


def test_autoscaling_source_defaults_to_router_service() -> None:
    cfg = config.parse({"router": {"service": {"port": 9000}}})
    assert signal.source_for(cfg, "llama", "ml") == signal.Source(
        "scrape", "http://llama-router.ml.svc:9000/metrics"
    )


def test_autoscaling_source_metrics_url_and_prometheus() -> None:
    cfg = config.parse({"autoscaling": {"metricsUrl": "http://127.0.0.1:1/metrics"}})
    assert signal.source_for(cfg, "p", "ns").url == "http://127.0.0.1:1/metrics"
    cfg = config.parse({"autoscaling": {"metricsUrl": "http://x", "prometheus": {"url": "http://prom:9090"}}})
    src = signal.source_for(cfg, "p", "ns")
    assert src.kind == "prometheus"
    assert 'namespace="ns"' in src.query and 'service="p-router"' in src.query


def test_autoscaling_config_defaults_and_roles() -> None:
    cfg = config.parse(
        {
            "prefill": {"autoscaling": {"enabled": True, "maxReplicas": 4, "targetQueueDepth": 2}},
            "decode": {"autoscaling": {"enabled": False}},
        }
    )
    assert cfg.mode == "builtin" and cfg.interval_s == 5 and cfg.router_port == 8000
    assert cfg.roles == {"prefill": RoleScaling(max_replicas=4, target_queue_depth=2)}


@pytest.mark.parametrize(
    "spec,field",
    [
        ({"autoscaling": {"mode": "hpa"}}, "spec.autoscaling.mode"),
        ({"autoscaling": {"intervalSeconds": 0}}, "spec.autoscaling.intervalSeconds"),
        ({"autoscaling": {"intervalSeconds": "5s"}}, "spec.autoscaling.intervalSeconds"),
        (
            {"decode": {"autoscaling": {"enabled": True, "minReplicas": "two"}}},
            "spec.decode.autoscaling.minReplicas",
        ),
        (
            {"prefill": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
            "spec.prefill.autoscaling.maxReplicas",
        ),
        ({"prefill": []}, "spec.prefill"),
    ],
)
def test_autoscaling_config_errors_name_field(spec: dict, field: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.parse(spec)
    assert err.value.field == field
