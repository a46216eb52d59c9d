"""Parsing of the autoscaling spec and of the queue-depth signal (pure).

spec.py is the one parser of the autoscaling fields: every case here goes through both the
operator's entry point (spec.parse_pool) and the autoscaler's (autoscaling.config.parse), which
must agree on the value, the field and the message.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from baton_operator import crd
from baton_operator.autoscaling import config, signal
from baton_operator.autoscaling.policy import RoleScaling
from baton_operator.spec import SpecError, parse_pool

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


def test_autoscaling_parse_series_of_several_routers_count_the_workers_once() -> None:
    # Two routers on one page (labels tell them apart), neither saying what it holds: the larger.
    text = 'baton_queue_depth{role="decode",router="a"} 2\nbaton_queue_depth{role="decode",router="b"} 5\n'
    assert signal.parse_queue_depths(text) == {"decode": 5.0}


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
    source = signal.source_for(cfg, "llama", "ml")
    assert source == signal.Source("routers", "http://llama-router.ml.svc:9000/metrics")
    assert source.describe() == "the routers behind http://llama-router.ml.svc:9000/metrics"


def test_autoscaling_source_metrics_url_and_prometheus() -> None:
    cfg = config.parse({"autoscaling": {"metricsUrl": "http://127.0.0.1:1/metrics"}})
    assert signal.source_for(cfg, "p", "ns").url == "http://127.0.0.1:1/metrics"
    cfg = config.parse({"autoscaling": {"metricsUrl": "http://x", "prometheus": {"url": "http://prom:9090"}}})
    src = signal.source_for(cfg, "p", "ns")
    assert src.kind == "prometheus"
    assert 'namespace="ns"' in src.query and 'pod=~"p-router-[^-]+-[^-]+"' in src.query
    assert "$" not in src.query


def body(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"model": {"source": "builtin://tiny"}, **spec},
    }


def test_autoscaling_config_defaults_and_roles() -> None:
    cfg = config.parse(
        {
            "prefill": {"autoscaling": {"enabled": True, "maxReplicas": 4, "targetQueueDepth": 2}},
            "decode": {"autoscaling": {"enabled": False}},
        }
    )
    assert cfg.mode == "builtin" and cfg.interval_s == 5 and cfg.router_port == 8000
    assert cfg.roles == {"prefill": RoleScaling(max_replicas=4, target_queue_depth=2)}


GOOD_SPECS: list[dict[str, Any]] = [
    {},
    {"prefill": {"autoscaling": {"enabled": True}}},
    {
        "autoscaling": {
            "mode": "keda",
            "intervalSeconds": 10,
            "prometheus": {"url": "http://p", "query": "q"},
        },
        "router": {"service": {"port": 9000}},
        "prefill": {"autoscaling": {"enabled": True, "minReplicas": 0, "tolerance": 0}},
        "decode": {
            "autoscaling": {
                "enabled": True,
                "minReplicas": 2,
                "maxReplicas": 2,
                "targetQueueDepth": 0.5,
                "tolerance": 0.99,
                "scaleUpStabilizationSeconds": 15,
                "scaleDownStabilizationSeconds": 600,
                "maxScaleStep": 1,
            }
        },
    },
    {
        "autoscaling": {"metricsUrl": "http://x"},
        "decode": {"autoscaling": {"enabled": False, "maxReplicas": 1}},
    },
]


@pytest.mark.parametrize("spec", GOOD_SPECS)
def test_autoscaling_config_is_what_the_pool_spec_parsed(spec: dict[str, Any]) -> None:
    pool = parse_pool(body(spec), "img").spec
    cfg = config.parse({"model": {"source": "builtin://tiny"}, **spec})
    assert cfg == config.AutoscalingConfig(
        mode=pool.autoscaling.mode,
        metrics_url=pool.autoscaling.metrics_url,
        interval_s=pool.autoscaling.interval_seconds,
        prometheus_url=pool.autoscaling.prometheus_url,
        prometheus_query=pool.autoscaling.prometheus_query,
        router_port=pool.router.port,
        roles={
            role: config.role_scaling(pool.role(role).autoscaling)
            for role in ("prefill", "decode")
            if pool.role(role).autoscaling.enabled
        },
    )
    # Windows and the interval are whole seconds, as the CRD's integer fields.
    assert type(cfg.interval_s) is int
    for scaling in cfg.roles.values():
        assert type(scaling.scale_up_stabilization_s) is int
        assert type(scaling.scale_down_stabilization_s) is int


# (spec, field, part of the message). The same for a disabled role: the operator refuses the pool
# either way, so the autoscaler does too.
BAD_SPECS: list[tuple[dict[str, Any], str, str]] = [
    ({"autoscaling": {"mode": "hpa"}}, "spec.autoscaling.mode", "must be one of builtin, keda"),
    ({"autoscaling": {"intervalSeconds": 0}}, "spec.autoscaling.intervalSeconds", "must be >= 1"),
    ({"autoscaling": {"intervalSeconds": "5s"}}, "spec.autoscaling.intervalSeconds", "must be an integer"),
    ({"autoscaling": {"intervalSeconds": 2.5}}, "spec.autoscaling.intervalSeconds", "must be an integer"),
    ({"autoscaling": []}, "spec.autoscaling", "must be an object"),
    ({"autoscaling": {"metricsUrl": 1}}, "spec.autoscaling.metricsUrl", "must be a string"),
    ({"router": {"service": {"port": 70000}}}, "spec.router.service.port", "must be <= 65535"),
    (
        {"decode": {"autoscaling": {"enabled": True, "minReplicas": "two"}}},
        "spec.decode.autoscaling.minReplicas",
        "must be an integer",
    ),
    (
        {"prefill": {"autoscaling": {"minReplicas": -1}}},
        "spec.prefill.autoscaling.minReplicas",
        "must be >= 0",
    ),
    (
        {"prefill": {"autoscaling": {"maxReplicas": 0}}},
        "spec.prefill.autoscaling.maxReplicas",
        "must be >= 1",
    ),
    (
        {"prefill": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
        "spec.prefill.autoscaling.minReplicas",
        "must be <= spec.prefill.autoscaling.maxReplicas (5 > 2)",
    ),
    (
        {"prefill": {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}},
        "spec.prefill.autoscaling.minReplicas",
        "must be <= spec.prefill.autoscaling.maxReplicas (3 > 2)",
    ),
    (
        {"decode": {"autoscaling": {"minReplicas": 9}}},
        "spec.decode.autoscaling.minReplicas",
        "must be <= spec.decode.autoscaling.maxReplicas (9 > 8)",
    ),
    (
        {"prefill": {"autoscaling": {"targetQueueDepth": 0}}},
        "spec.prefill.autoscaling.targetQueueDepth",
        "> 0",
    ),
    (
        {"prefill": {"autoscaling": {"targetQueueDepth": -1}}},
        "spec.prefill.autoscaling.targetQueueDepth",
        ">= 0",
    ),
    ({"prefill": {"autoscaling": {"tolerance": 1.5}}}, "spec.prefill.autoscaling.tolerance", "must be < 1"),
    ({"prefill": {"autoscaling": {"tolerance": 1}}}, "spec.prefill.autoscaling.tolerance", "must be < 1"),
    ({"prefill": {"autoscaling": {"tolerance": -0.1}}}, "spec.prefill.autoscaling.tolerance", "must be >= 0"),
    (
        {"prefill": {"autoscaling": {"maxScaleStep": 0}}},
        "spec.prefill.autoscaling.maxScaleStep",
        "must be >= 1",
    ),
    (
        {"prefill": {"autoscaling": {"scaleUpStabilizationSeconds": -1}}},
        "spec.prefill.autoscaling.scaleUpStabilizationSeconds",
        "must be >= 0",
    ),
    (
        {"prefill": {"autoscaling": {"scaleDownStabilizationSeconds": -1}}},
        "spec.prefill.autoscaling.scaleDownStabilizationSeconds",
        "must be >= 0",
    ),
    (
        {"decode": {"autoscaling": {"enabled": True, "scaleDownStabilizationSeconds": 300.5}}},
        "spec.decode.autoscaling.scaleDownStabilizationSeconds",
        "must be an integer",
    ),
    (
        {"decode": {"autoscaling": {"scaleUpStabilizationSeconds": 1.0}}},
        "spec.decode.autoscaling.scaleUpStabilizationSeconds",
        "must be an integer",
    ),
    ({"prefill": {"autoscaling": {"enabled": "yes"}}}, "spec.prefill.autoscaling.enabled", "true or false"),
    ({"prefill": {"autoscaling": 3}}, "spec.prefill.autoscaling", "must be an object"),
    ({"prefill": []}, "spec.prefill", "must be an object"),
]


@pytest.mark.parametrize(("spec", "field", "message"), BAD_SPECS, ids=[f for _, f, _ in BAD_SPECS])
def test_autoscaling_config_errors_name_field(spec: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(SpecError) as from_pool:
        parse_pool(body(spec), "img")
    with pytest.raises(config.ConfigError) as from_config:
        config.parse(spec)
    assert from_config.value.field == from_pool.value.field == field
    assert str(from_config.value) == str(from_pool.value)
    assert message in from_pool.value.message
    assert str(from_pool.value).startswith(f"{field}: ")


def test_autoscaling_config_error_is_a_spec_error() -> None:
    # Handlers map SpecError to the InvalidSpec condition; ConfigError must go the same way.
    assert issubclass(config.ConfigError, SpecError)


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_autoscaling_min_above_max_reads_like_the_crd_rule(role: str) -> None:
    (rule,) = crd.role_autoscaling_schema(role)["x-kubernetes-validations"]
    with pytest.raises(config.ConfigError) as err:
        config.parse({role: {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}})
    assert f".{err.value.field.rsplit('.', 1)[1]}" == rule["fieldPath"]
    assert f"{err.value.field} {err.value.message}".startswith(rule["message"])
