"""The CRD's schema of a worker role (spec.prefill, spec.decode): sizes, placement, autoscaling."""

from __future__ import annotations

from baton_operator.crd_types import (
    S,
    affinity_schema,
    array,
    boolean,
    integer,
    number,
    obj,
    quantity_map,
    string,
    string_map,
    toleration_schema,
)
from baton_operator.spec import DEVICES, GPU_PRODUCTS, ROLE_DEFAULTS, TENSOR_PARALLEL_SIZES


def role_autoscaling_schema(role: str) -> S:
    path = f"spec.{role}.autoscaling"
    return obj(
        f"Autoscaling of the {role} pool on the router's queue depth for this role. When enabled, the "
        "operator stops setting replicas and the autoscaler (field manager baton-autoscaler) owns them.",
        {
            "enabled": boolean("Turn autoscaling of this role on.", default=False),
            "minReplicas": integer("Fewest replicas, never scaled below.", default=1, minimum=0),
            "maxReplicas": integer("Most replicas, never scaled above.", default=8, minimum=1),
            "targetQueueDepth": number(
                "Requests waiting per replica the autoscaler aims for; desired = ceil(queue / target).",
                default=4,
                exclusiveMinimum=True,
                minimum=0,
            ),
            "scaleUpStabilizationSeconds": integer(
                "Seconds the higher recommendation must persist before scaling up.", default=0, minimum=0
            ),
            "scaleDownStabilizationSeconds": integer(
                "Seconds the queue must stay low before scaling down.", default=300, minimum=0
            ),
            "tolerance": number(
                "Relative change of the recommendation ignored as noise (0.1 = 10%); below 1.",
                default=0.1,
                minimum=0,
                maximum=1,
                exclusiveMaximum=True,
            ),
            "maxScaleStep": integer("Most replicas added or removed in one step.", default=4, minimum=1),
        },
        rules=[
            {
                "rule": "self.minReplicas <= self.maxReplicas",
                # A static message: messageExpression with string(int) blows the CEL cost budget.
                "message": f"{path}.minReplicas must be <= {path}.maxReplicas",
                "fieldPath": ".minReplicas",
                "reason": "FieldValueInvalid",
            }
        ],
    )


def role_schema(role: str) -> S:
    d = ROLE_DEFAULTS[role]
    what = (
        "prompt prefill (compute-bound, small batches)"
        if role == "prefill"
        else "token decode (large batches)"
    )
    kind = "StatefulSet" if role == "prefill" else "Deployment"
    return obj(
        f"The {role} pool: pods that run {what}, managed as a {kind}.",
        {
            "replicas": integer(
                f"Number of {role} pods (ignored while autoscaling is enabled).",
                default=d["replicas"],
                minimum=0,
            ),
            "tensorParallelSize": integer(
                "GPUs per pod (tensor parallelism): 1, 2, 4 or 8. Each pod requests this many nvidia.com/gpu.",
                default=d["tensorParallelSize"],
                enum=list(TENSOR_PARALLEL_SIZES),
            ),
            "maxBatchSize": integer(
                "Most sequences a pod runs at once.", default=d["maxBatchSize"], minimum=1, maximum=4096
            ),
            "device": string(
                "What the workers compute on: cuda (GPUs: each pod requests tensorParallelSize nvidia.com/gpu "
                "on gpu.type nodes and tolerates the nvidia.com/gpu taint) or cpu (no GPU requested, no GPU "
                "node selector; for development and test clusters and small models). With cpu, "
                "tensorParallelSize must be 1 and gpu must not be set.",
                default=d["device"],
                enum=list(DEVICES),
            ),
            "gpu": obj(
                "GPU model of this role's nodes (device cuda only).",
                {
                    "type": string(
                        "GPU type; selects nodes by the GPU Feature Discovery label nvidia.com/gpu.product "
                        f"({', '.join(f'{k}={v}' for k, v in GPU_PRODUCTS.items())}).",
                        default=d["gpu"],
                        enum=list(GPU_PRODUCTS),
                    )
                },
            ),
            "nodeSelector": string_map(
                "Extra node labels the pods require; merged with the GPU type's selector."
            ),
            "tolerations": array(
                "Extra tolerations; the nvidia.com/gpu NoSchedule toleration is always added.",
                toleration_schema(),
            ),
            "affinity": affinity_schema(),
            "resources": obj(
                "Extra resource requests and limits of the worker container (CPU, memory, ...). The GPU count "
                "always comes from tensorParallelSize.",
                {
                    "requests": quantity_map("Resource requests, e.g. cpu: 16, memory: 200Gi."),
                    "limits": quantity_map("Resource limits."),
                },
            ),
            "autoscaling": role_autoscaling_schema(role),
        },
        rules=[
            {
                "rule": "!has(self.device) || self.device != 'cpu' || !has(self.tensorParallelSize) "
                "|| self.tensorParallelSize == 1",
                "message": f"spec.{role}.tensorParallelSize must be 1 when device is cpu: tensor parallelism "
                "runs on GPUs",
                "fieldPath": ".tensorParallelSize",
                "reason": "FieldValueInvalid",
            },
            {
                "rule": "!has(self.device) || self.device != 'cpu' || !has(self.gpu)",
                "message": f"spec.{role}.gpu must not be set when device is cpu: a CPU pod requests no GPU",
                "fieldPath": ".gpu",
                "reason": "FieldValueForbidden",
            },
        ],
    )
