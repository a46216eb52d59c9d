"""Pure builders of the router's children: its Deployment and the identity that lets it read
its pool's EndpointSlices (worker discovery)."""

from __future__ import annotations

from typing import Any

from baton_operator.names import (
    child_name,
    labels,
    metadata,
    router_service_account_name,
    selector_labels,
)
from baton_operator.pods import (
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
from baton_operator.spec import Pool
from baton_operator.tls import tls_args

ROUTER_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
ROUTER_GRACE_SECONDS = 60


def router_command(pool: Pool) -> list[str]:
    """Router command line: it discovers workers through the role Services' EndpointSlices."""
    return [
        "baton",
        "router",
        "--host",
        "0.0.0.0",
        "--port",
        str(pool.spec.router.port),
        "--prefill-service",
        child_name(pool, "prefill"),
        "--decode-service",
        child_name(pool, "decode"),
        "--namespace",
        pool.namespace,
        "--served-model-name",
        pool.spec.model.name,
        "--max-model-len",
        str(pool.spec.model.max_model_len),
        *pool.spec.prefix_caching.router_args(),
        *tls_args(pool),
    ]


def build_router_deployment(pool: Pool) -> dict[str, Any]:
    router = pool.spec.router
    # The router loads the model's tokenizer (chat template, prompt lengths): it reads the model
    # source from the mounted config and the files from the model volume, but needs no /dev/shm.
    pod_volumes, mounts = volumes(pool, shm=False)
    container = {
        "name": "router",
        "image": pool.spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": router_command(pool),
        "ports": [{"name": "http", "containerPort": router.port, "protocol": "TCP"}],
        "env": container_env(pool, "router"),
        **container_extras(pool),
        "volumeMounts": mounts,
        "resources": ROUTER_RESOURCES,
        "readinessProbe": probe("/health", "http", 2, 3),
        "livenessProbe": liveness("http"),
        "securityContext": container_security(),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(pool, child_name(pool, "router"), labels(pool, "router")),
        "spec": {
            "replicas": router.replicas,
            "selector": {"matchLabels": selector_labels(pool, "router")},
            "template": {
                "metadata": {"labels": labels(pool, "router")},
                "spec": {
                    "serviceAccountName": router_service_account_name(pool),
                    "securityContext": POD_SECURITY,
                    "containers": [container],
                    "volumes": pod_volumes,
                    "terminationGracePeriodSeconds": ROUTER_GRACE_SECONDS,
                    "topologySpreadConstraints": spread(pool, "router"),
                    **pod_extras(pool),
                },
            },
        },
    }


def build_router_rbac(pool: Pool) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding letting the router read its pool's EndpointSlices."""
    name = router_service_account_name(pool)
    meta = metadata(pool, name, labels(pool, "router"))
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": pool.namespace}],
        },
    ]
