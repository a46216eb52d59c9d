"""Names and labels of a pool's children: the architecture's public label contract lives here."""

from __future__ import annotations

from typing import Any

from baton_operator.spec import API_VERSION, GROUP, KIND, Pool

MANAGED_BY = "baton-operator"
APP_NAME = "baton"

# Well-known Kubernetes label keys.
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"

# The architecture's own label and annotation keys.
POOL_LABEL = f"{GROUP}/pool"
ROLE_LABEL = f"{GROUP}/role"
CONFIG_HASH_ANNOTATION = f"{GROUP}/config-hash"
TLS_IDENTITY_ANNOTATION = f"{GROUP}/tls-identity"

# Node labels (and taint keys) of the sandbox and the benches.
NODE_POOL_LABEL = f"{GROUP}/node-pool"
REAL_NODE_LABEL = f"{GROUP}/real-node"
TEST_NODE_LABEL = f"{GROUP}/test-node"


# The kind (apps/v1) of each role's workload.
WORKLOAD_KINDS: dict[str, str] = {"prefill": "StatefulSet", "decode": "Deployment", "router": "Deployment"}


def workload_name(pool_name: str, role: str) -> str:
    """Name of the workload and Service of ``role`` (prefill, decode, router) of the pool ``pool_name``."""
    return f"{pool_name}-{role}"


def child_name(pool: Pool, role: str) -> str:
    """:func:`workload_name` of a parsed pool."""
    return workload_name(pool.name, role)


def config_map_name(pool: Pool) -> str:
    return f"{pool.name}-config"


def model_cache_claim_name(pool: Pool) -> str:
    """The PersistentVolumeClaim of ``spec.model.cache``."""
    return f"{pool.name}-model-cache"


def router_service_account_name(pool: Pool) -> str:
    return f"{pool.name}-router"


def pool_selector(pool_name: str) -> str:
    """Label selector of every child and pod of the pool named ``pool_name``."""
    return f"{POOL_LABEL}={pool_name}"


def role_selector_labels(pool_name: str, role: str) -> dict[str, str]:
    """Labels that select one role's pods; immutable in a workload's selector, so never change them."""
    return {
        NAME_LABEL: APP_NAME,
        INSTANCE_LABEL: pool_name,
        POOL_LABEL: pool_name,
        ROLE_LABEL: role,
    }


def role_labels(pool_name: str, role: str) -> dict[str, str]:
    """The architecture's labels, on every child and pod, by pool name."""
    return {**role_selector_labels(pool_name, role), MANAGED_BY_LABEL: MANAGED_BY}


def selector_labels(pool: Pool, role: str) -> dict[str, str]:
    """:func:`role_selector_labels` of a parsed pool."""
    return role_selector_labels(pool.name, role)


def labels(pool: Pool, role: str) -> dict[str, str]:
    """The architecture's labels, on every child and pod."""
    return role_labels(pool.name, role)


def pool_labels(pool: Pool) -> dict[str, str]:
    """Labels of children that belong to the whole pool (the ConfigMap); role is `pool`."""
    return labels(pool, "pool")


def inference_pool(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    """An InferencePool object with ``spec``, as a client creates it."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def owner_reference(pool: Pool) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": pool.name,
        "uid": pool.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(pool: Pool, name: str, object_labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": pool.namespace,
        "labels": object_labels,
        "ownerReferences": [owner_reference(pool)],
    }
