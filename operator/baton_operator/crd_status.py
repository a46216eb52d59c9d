"""The CRD's status schema: what the operator and the autoscaler write about a pool."""

from __future__ import annotations

from baton_operator.crd_slo import slo_status_schema
from baton_operator.crd_types import S, array, boolean, integer, number, obj, string


def _role_status(role: str) -> S:
    return obj(
        f"Observed state of the {role} pool.",
        {
            "replicas": integer("Pods that exist."),
            "readyReplicas": integer("Pods that are Ready."),
            "desiredReplicas": integer("Pods wanted (spec replicas, or the autoscaler's decision)."),
            "summary": string("readyReplicas/desiredReplicas, for kubectl get."),
            "queueDepth": number("Last sampled queue depth of this role (autoscaler)."),
            "lastScaleTime": string("When the autoscaler last changed replicas.", format="date-time"),
            "lastScaleReason": string("Why the autoscaler last changed replicas."),
        },
    )


def status_schema() -> S:
    condition = obj(
        "A condition of the pool.",
        {
            "type": string("Ready, Progressing, Degraded, ScalingActive or ModelCacheReady."),
            "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": string("One-word reason in CamelCase."),
            "message": string("What a human should know."),
            "lastTransitionTime": string("When status last changed.", format="date-time"),
            "observedGeneration": integer("Generation of the spec this condition is about."),
        },
        required=["type", "status"],
    )
    return obj(
        "Observed state of the pool, written by the operator and the autoscaler.",
        {
            "observedGeneration": integer("The spec generation the operator last reconciled."),
            "conditions": {
                **array(
                    "Ready, Progressing, Degraded, ScalingActive (a role autoscales) and ModelCacheReady "
                    "(spec.model.cache is on: whether its claim is Bound) conditions.",
                    condition,
                ),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "endpoint": string("URL of the router (OpenAI API base without /v1)."),
            "prefill": _role_status("prefill"),
            "decode": _role_status("decode"),
            "router": obj(
                "Observed state of the router.",
                {
                    "replicas": integer("Router pods that exist."),
                    "readyReplicas": integer("Router pods Ready."),
                },
            ),
            "autoscaling": obj(
                "What the autoscaler sees.",
                {
                    "metricsAvailable": boolean("Whether the last queue-depth sample succeeded."),
                    "message": string("Details of the last sample or why it failed."),
                    "lastSampleTime": string("When the queue depth was last sampled.", format="date-time"),
                    "limitedBy": string(
                        "What stops scaling further (maxReplicas, unschedulable pods), if anything."
                    ),
                    "slo": slo_status_schema(),
                },
            ),
        },
    )
