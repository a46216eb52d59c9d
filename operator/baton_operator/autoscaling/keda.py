"""`spec.autoscaling.mode: keda`: one KEDA ScaledObject per autoscaled role, instead of the built-in loop.

Pure: the operator applies what :func:`build_scaled_objects` returns as children of the pool.
The ScaledObject mirrors the built-in policy as far as KEDA and the HPA can express it:
``AverageValue`` of the role's whole queue with target ``targetQueueDepth`` (the HPA computes
ceil(queue / target)), the same min/max, stabilization windows and max step per interval, and a
fallback that holds the current replicas when the metric cannot be read.
"""

from __future__ import annotations

from collections.abc import Mapping
from string import Template
from typing import Any

from baton_operator.autoscaling import config, signal
from baton_operator.autoscaling.policy import RoleScaling
from baton_operator.names import WORKLOAD_KINDS, role_labels, workload_name
from baton_operator.spec import API_VERSION as POOL_API_VERSION
from baton_operator.spec import KIND as POOL_KIND

API_VERSION = "keda.sh/v1alpha1"
KIND = "ScaledObject"
# signal.DEFAULT_PROMQL for one role: the workers' part once, plus every router's held requests.
_ROLE = signal.ROUTERS + ', role="$role"'
_Q, _H = f"baton_queue_depth{{{_ROLE}}}", f"baton_router_queue_depth{{{_ROLE}}}"
DEFAULT_ROLE_PROMQL = f"max(({_Q} - {_H}) or {_Q}) + sum({_H} or ({_Q} * 0))"
# KEDA marks a scaler failed after this many failed polls and then applies the fallback.
FALLBACK_FAILURES = 3
DEFAULT_TOLERANCE = 0.1


def scaled_object_name(pool: str, role: str) -> str:
    """Name of a role's ScaledObject: the same as the workload it scales."""
    return workload_name(pool, role)


def _trigger(
    cfg: config.AutoscalingConfig, scaling: RoleScaling, pool: str, namespace: str, role: str
) -> dict:
    target = f"{scaling.target_queue_depth:g}"
    if cfg.prometheus_url:
        query = cfg.prometheus_query or DEFAULT_ROLE_PROMQL
        if "$role" not in query:
            raise config.ConfigError(
                "spec.autoscaling.prometheus.query",
                "with mode keda the query must contain $role (one ScaledObject per role), "
                f"e.g. {DEFAULT_ROLE_PROMQL}",
            )
        return {
            "type": "prometheus",
            "name": f"{role}-queue-depth",
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": cfg.prometheus_url,
                "query": Template(query).safe_substitute(pool=pool, namespace=namespace, role=role),
                "threshold": target,
            },
        }
    url = cfg.metrics_url or f"http://{pool}-router.{namespace}.svc:{cfg.router_port}/metrics"
    return {
        "type": "metrics-api",
        "name": f"{role}-queue-depth",
        "metricType": "AverageValue",
        "metadata": {
            "url": url,
            "format": "prometheus",
            "valueLocation": f'baton_queue_depth{{role="{role}"}}',
            "targetValue": target,
        },
    }


def _behavior(window_s: int, step: int, period_s: int, tolerance: float) -> dict[str, Any]:
    rules: dict[str, Any] = {
        "stabilizationWindowSeconds": window_s,
        "selectPolicy": "Max",
        "policies": [{"type": "Pods", "value": step, "periodSeconds": max(1, period_s)}],
    }
    if abs(tolerance - DEFAULT_TOLERANCE) > 1e-9:
        # Beta in Kubernetes 1.34 (HPAConfigurableTolerance); a server without it drops the field.
        rules["tolerance"] = f"{tolerance:g}"
    return rules


def build_scaled_objects(pool: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ScaledObjects of an InferencePool object (a dict as the API returns it).

    Returns [] unless ``spec.autoscaling.mode`` is keda; one object per role whose autoscaling is
    enabled otherwise. Raises config.ConfigError naming the field on bad input.
    """
    meta = pool.get("metadata") or {}
    name, namespace = str(meta.get("name") or ""), str(meta.get("namespace") or "default")
    if not name:
        raise config.ConfigError("metadata.name", "is required")
    cfg = config.parse(pool.get("spec"))
    if cfg.mode != "keda":
        return []
    owner = []
    if meta.get("uid"):
        owner = [
            {
                "apiVersion": str(pool.get("apiVersion") or POOL_API_VERSION),
                "kind": str(pool.get("kind") or POOL_KIND),
                "name": name,
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    out = []
    for role, scaling in cfg.roles.items():
        metadata: dict[str, Any] = {
            "name": scaled_object_name(name, role),
            "namespace": namespace,
            "labels": role_labels(name, role),
        }
        if owner:
            metadata["ownerReferences"] = owner
        out.append(
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": metadata,
                "spec": {
                    "scaleTargetRef": {
                        "apiVersion": "apps/v1",
                        "kind": WORKLOAD_KINDS[role],
                        "name": workload_name(name, role),
                    },
                    "pollingInterval": cfg.interval_s,
                    "cooldownPeriod": scaling.scale_down_stabilization_s,
                    "minReplicaCount": scaling.min_replicas,
                    "maxReplicaCount": scaling.max_replicas,
                    "fallback": {
                        "failureThreshold": FALLBACK_FAILURES,
                        "replicas": scaling.min_replicas,
                        "behavior": "currentReplicas",
                    },
                    "advanced": {
                        "horizontalPodAutoscalerConfig": {
                            "name": f"keda-hpa-{workload_name(name, role)}",
                            "behavior": {
                                "scaleUp": _behavior(
                                    scaling.scale_up_stabilization_s,
                                    scaling.max_scale_step,
                                    cfg.interval_s,
                                    scaling.tolerance,
                                ),
                                "scaleDown": _behavior(
                                    scaling.scale_down_stabilization_s,
                                    scaling.max_scale_step,
                                    cfg.interval_s,
                                    scaling.tolerance,
                                ),
                            },
                        }
                    },
                    "triggers": [_trigger(cfg, scaling, name, namespace, role)],
                },
            }
        )
    return out
