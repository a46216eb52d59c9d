"""KEDA ScaledObjects built from an InferencePool (pure; the CRD check is a sandbox test)."""

from __future__ import annotations

import pytest
from baton_operator.autoscaling import config
from baton_operator.autoscaling.keda import build_scaled_objects


def pool(spec: dict) -> dict:
    return {
        "apiVersion": "baton.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": "llama", "namespace": "ml", "uid": "u-1"},
        "spec": {"model": {"source": "builtin://tiny"}, **spec},
    }


KEDA_BOTH = {
    "autoscaling": {"mode": "keda", "intervalSeconds": 10},
    "prefill": {"autoscaling": {"enabled": True, "maxReplicas": 4, "targetQueueDepth": 2}},
    "decode": {
        "autoscaling": {
            "enabled": True,
            "minReplicas": 2,
            "scaleDownStabilizationSeconds": 120,
            "tolerance": 0.05,
        }
    },
}


def test_autoscaling_keda_one_scaled_object_per_role() -> None:
    objs = build_scaled_objects(pool(KEDA_BOTH))
    assert [o["metadata"]["name"] for o in objs] == ["llama-prefill", "llama-decode"]
    prefill, decode = objs
    assert prefill["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "llama-prefill",
    }
    assert decode["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert (prefill["spec"]["minReplicaCount"], prefill["spec"]["maxReplicaCount"]) == (1, 4)
    assert prefill["spec"]["pollingInterval"] == 10
    trig = prefill["spec"]["triggers"][0]
    assert trig["type"] == "metrics-api" and trig["metricType"] == "AverageValue"
    assert trig["metadata"] == {
        "url": "http://llama-router.ml.svc:8000/metrics",
        "format": "prometheus",
        "valueLocation": 'baton_queue_depth{role="prefill"}',
        "targetValue": "2",
    }
    assert all(isinstance(v, str) for v in trig["metadata"].values())
    down = decode["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == 120 and down["tolerance"] == "0.05"
    assert down["policies"] == [{"type": "Pods", "value": 4, "periodSeconds": 10}]
    assert (
        "tolerance" not in prefill["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]
    )
    assert decode["spec"]["fallback"]["behavior"] == "currentReplicas"
    assert prefill["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert prefill["metadata"]["labels"]["baton.dev/role"] == "prefill"


def test_autoscaling_keda_prometheus_trigger() -> None:
    spec = {
        "autoscaling": {"mode": "keda", "prometheus": {"url": "http://prom:9090"}},
        "decode": {"autoscaling": {"enabled": True}},
    }
    (obj,) = build_scaled_objects(pool(spec))
    trig = obj["spec"]["triggers"][0]
    assert trig["type"] == "prometheus"
    assert trig["metadata"]["serverAddress"] == "http://prom:9090"
    assert 'role="decode"' in trig["metadata"]["query"] and 'namespace="ml"' in trig["metadata"]["query"]
    assert trig["metadata"]["threshold"] == "4"


def test_autoscaling_keda_custom_query_needs_role() -> None:
    spec = {
        "autoscaling": {"mode": "keda", "prometheus": {"url": "http://p", "query": "sum(baton_queue_depth)"}},
        "decode": {"autoscaling": {"enabled": True}},
    }
    with pytest.raises(config.ConfigError) as err:
        build_scaled_objects(pool(spec))
    assert err.value.field == "spec.autoscaling.prometheus.query"


@pytest.mark.parametrize(
    "spec", [{"prefill": {"autoscaling": {"enabled": True}}}, {"autoscaling": {"mode": "keda"}}]
)
def test_autoscaling_keda_nothing_when_builtin_or_no_role(spec: dict) -> None:
    assert build_scaled_objects(pool(spec)) == []
