"""Pure builders: an InferencePool's parsed spec -> the manifest dicts of every child.

Each function returns the full object the operator server-side applies (field manager
``baton-operator``); nothing here talks to the API. Quantities are strings because the API server
returns them as strings, and a no-op resync compares desired with live objects field by field.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from baton_operator.builders_router import (
    ROUTER_GRACE_SECONDS,
    ROUTER_RESOURCES,
    build_router_deployment,
    build_router_rbac,
    router_command,
)
from baton_operator.memory import worker_memory_request
from baton_operator.names import (
    CONFIG_HASH_ANNOTATION,
    MANAGED_BY,
    child_name,
    config_map_name,
    labels,
    metadata,
    model_cache_claim_name,
    pool_labels,
    selector_labels,
)
from baton_operator.netpol import build_network_policies
from baton_operator.pods import (
    CONFIG_FILE,
    POD_SECURITY,
    container_env,
    container_extras,
    container_security,
    liveness,
    pod_extras,
    probe,
    spread,
    volumes,
)
from baton_operator.spec import Pool, RoleSpec
from baton_operator.tls import tls_args

__all__ = [
    "CONFIG_HASH_ANNOTATION",
    "MANAGED_BY",
    "ROUTER_RESOURCES",
    "build_router_deployment",
    "build_router_rbac",
    "router_command",
    "child_name",
    "config_map_name",
    "labels",
    "selector_labels",
]

WORKER_GRPC_PORT = 50051
WORKER_METRICS_PORT = 8081
# preStop pause so EndpointSlices drop the pod (the router stops sending) before SIGTERM drains it.
PRE_STOP_SECONDS = 5
# Long enough for a decode pod to finish its running sequences after readiness drops.
GRACE_SECONDS = {"prefill": 120, "decode": 600, "router": ROUTER_GRACE_SECONDS}


def worker_config(pool: Pool) -> dict[str, Any]:
    """The worker configuration both roles read (mounted from the ConfigMap at /etc/baton)."""
    spec = pool.spec
    return {
        "pool": pool.name,
        "model": {
            "name": spec.model.name,
            "source": spec.model.source,
            "dtype": spec.model.dtype,
            "maxModelLen": spec.model.max_model_len,
        },
        "kvTransfer": {"backend": spec.kv_transfer.backend, "rdmaResource": spec.kv_transfer.rdma_resource},
        "roles": {
            role.role: {"tensorParallelSize": role.tensor_parallel_size, "maxBatchSize": role.max_batch_size}
            for role in (spec.prefill, spec.decode)
        },
        "services": {
            "prefill": child_name(pool, "prefill"),
            "decode": child_name(pool, "decode"),
            "router": child_name(pool, "router"),
            "namespace": pool.namespace,
        },
    }


def _config_text(pool: Pool) -> str:
    return json.dumps(worker_config(pool), indent=2, sort_keys=True) + "\n"


def config_hash(pool: Pool) -> str:
    """Short hash of the ConfigMap's content, stamped on pod templates so a config change rolls pods."""
    return hashlib.sha256(_config_text(pool).encode()).hexdigest()[:16]


def build_model_cache_claim(pool: Pool) -> dict[str, Any] | None:
    """The PersistentVolumeClaim the workers keep their model cache on (``spec.model.cache``),
    None when the cache is off. Only the fields the user chose: the API server and the volume
    binder fill in the rest (volumeMode, volumeName, the default class)."""
    cache = pool.spec.model.cache
    if not cache.enabled:
        return None
    spec: dict[str, Any] = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name is not None:
        spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(pool, model_cache_claim_name(pool), pool_labels(pool)),
        "spec": spec,
    }


def build_config_map(pool: Pool) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(pool, config_map_name(pool), pool_labels(pool)),
        "data": {CONFIG_FILE: _config_text(pool)},
    }


def worker_command(pool: Pool, role: RoleSpec) -> list[str]:
    """The worker's command line; the role is on it so `ps` tells prefill and decode apart."""
    spec = pool.spec
    return [
        "baton",
        "worker",
        "--role",
        role.role,
        "--model",
        spec.model.source,
        "--served-model-name",
        spec.model.name,
        "--dtype",
        spec.model.dtype,
        "--max-model-len",
        str(spec.model.max_model_len),
        "--tensor-parallel-size",
        str(role.tensor_parallel_size),
        "--max-batch-size",
        str(role.max_batch_size),
        "--kv-backend",
        spec.kv_transfer.backend,
        "--device",
        role.device,
        "--host",
        "0.0.0.0",
        "--port",
        str(WORKER_GRPC_PORT),
        "--metrics-port",
        str(WORKER_METRICS_PORT),
        # SIGTERM drains (readiness drops, running sequences finish); leave the kubelet some slack.
        "--drain-grace-s",
        str(GRACE_SECONDS[role.role] - PRE_STOP_SECONDS - 10),
        *([] if spec.prefix_caching.enabled else ["--no-prefix-caching"]),
        *tls_args(pool),
    ]


def _worker_resources(pool: Pool, role: RoleSpec) -> dict[str, Any]:
    """User's extra requests/limits, a memory request from the model's size unless the user set
    one, plus the GPUs (= tensorParallelSize) and the RDMA device."""
    requests = {k: str(v) for k, v in (role.resources.get("requests") or {}).items()}
    limits = {k: str(v) for k, v in (role.resources.get("limits") or {}).items()}
    memory = worker_memory_request(pool, role)
    if memory is not None:
        # A request, no limit: host memory peaks while every TP rank reads the whole checkpoint,
        # and /dev/shm (NCCL) is charged to the pod; a limit sized for the steady state would
        # OOM-kill a rank and its TP group with it. resources.limits caps it where wanted.
        requests["memory"] = memory
    # Extended resources must have requests == limits; the GPU count is not the user's to override.
    extended = {"nvidia.com/gpu": str(role.tensor_parallel_size)} if role.uses_gpus else {}
    if pool.spec.kv_transfer.rdma_resource:
        extended[pool.spec.kv_transfer.rdma_resource] = "1"
    requests.update(extended)
    limits.update(extended)
    return {"requests": requests, "limits": limits}


def worker_pod_template(pool: Pool, role: RoleSpec) -> dict[str, Any]:
    """Pod template of a prefill or decode worker: GPUs, GPU-type node selector, probes, drain."""
    pod_volumes, mounts = volumes(pool, shared_cache=True)
    # Registering memory with an RDMA NIC pins pages.
    security = container_security(("IPC_LOCK",) if pool.spec.kv_transfer.rdma_resource else ())
    container: dict[str, Any] = {
        "name": "worker",
        "image": pool.spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": worker_command(pool, role),
        "ports": [
            {"name": "grpc", "containerPort": WORKER_GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": WORKER_METRICS_PORT, "protocol": "TCP"},
        ],
        "env": container_env(pool, role.role),
        **container_extras(pool),
        "resources": _worker_resources(pool, role),
        "volumeMounts": mounts,
        # /health is 200 only when the model is loaded and the worker is not draining: readiness.
        # Liveness asks only that the process answers, so a long load or a drain is not a restart.
        # Probed every 2 s: a pod is Ready (and the router sends it work) at most 2 s after its
        # model loaded; 900 failures allow a 30 min load of a large checkpoint.
        "startupProbe": probe("/health", "metrics", 2, 900),
        "readinessProbe": probe("/health", "metrics", 5, 3),
        "livenessProbe": liveness("metrics"),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_SECONDS)]}}},
        "securityContext": security,
    }
    # The user's selector wins on a key they set themselves (e.g. a more specific product string).
    node_selector = dict(role.node_selector)
    tolerations: list[dict[str, Any]] = []
    if role.uses_gpus:
        node_selector = {"nvidia.com/gpu.product": role.gpu_product, **node_selector}
        tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    tolerations += [t for t in role.tolerations if t not in tolerations]
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "topologySpreadConstraints": spread(pool, role.role),
        "terminationGracePeriodSeconds": GRACE_SECONDS[role.role],
        "automountServiceAccountToken": False,
        "securityContext": POD_SECURITY,
        "volumes": pod_volumes,
        **pod_extras(pool),
    }
    # Empty ones are left out as the API server leaves them out (a no-op resync compares them).
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if role.affinity:
        pod_spec["affinity"] = role.affinity
    return {
        "metadata": {
            "labels": labels(pool, role.role),
            "annotations": {CONFIG_HASH_ANNOTATION: config_hash(pool)},
        },
        "spec": pod_spec,
    }


def _replicas(role: RoleSpec) -> dict[str, Any]:
    # With autoscaling on, spec.replicas belongs to the field manager baton-autoscaler: omit it.
    return {} if role.autoscaling.enabled else {"replicas": role.replicas}


def build_prefill_statefulset(pool: Pool) -> dict[str, Any]:
    """Prefill StatefulSet: stable identities behind the headless Service, pods started in parallel."""
    role = pool.spec.prefill
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(pool, child_name(pool, "prefill"), labels(pool, "prefill")),
        "spec": {
            **_replicas(role),
            "serviceName": child_name(pool, "prefill"),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector_labels(pool, "prefill")},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": worker_pod_template(pool, role),
        },
    }


def build_decode_deployment(pool: Pool) -> dict[str, Any]:
    """Decode Deployment: interchangeable pods; surge first so capacity never drops in a rollout."""
    role = pool.spec.decode
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(pool, child_name(pool, "decode"), labels(pool, "decode")),
        "spec": {
            **_replicas(role),
            "selector": {"matchLabels": selector_labels(pool, "decode")},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": worker_pod_template(pool, role),
        },
    }


def _port(name: str, port: int, target: str) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": target, "protocol": "TCP"}


def build_service(pool: Pool, role: str) -> dict[str, Any]:
    """Service of a role. Prefill's is headless (StatefulSet identities); the router's is the endpoint."""
    spec: dict[str, Any] = {"selector": selector_labels(pool, role)}
    if role == "router":
        spec["type"] = pool.spec.router.service_type
        spec["ports"] = [_port("http", pool.spec.router.port, "http")]
    else:
        spec["ports"] = [
            _port("grpc", WORKER_GRPC_PORT, "grpc"),
            _port("metrics", WORKER_METRICS_PORT, "metrics"),
        ]
        if role == "prefill":
            spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(pool, child_name(pool, role), labels(pool, role)),
        "spec": spec,
    }


def build_pdb(pool: Pool, role: str) -> dict[str, Any]:
    """At most one pod of a role voluntarily evicted at a time (node drains, upgrades)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(pool, child_name(pool, role), labels(pool, role)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(pool, role)}},
    }


def build_children(pool: Pool) -> list[dict[str, Any]]:
    """Every child of a pool, in apply order (config and identities before the pods that use them)."""
    return [
        build_config_map(pool),
        # Before the workloads, whose pods cannot be scheduled until it exists.
        *filter(None, [build_model_cache_claim(pool)]),
        *build_router_rbac(pool),
        build_service(pool, "prefill"),
        build_service(pool, "decode"),
        build_service(pool, "router"),
        # Before the pods, so they are fenced from their first moment (where the CNI enforces it).
        *build_network_policies(pool),
        build_prefill_statefulset(pool),
        build_decode_deployment(pool),
        build_router_deployment(pool),
        *(build_pdb(pool, role) for role in ("prefill", "decode", "router")),
    ]
