"""Names and labels of a pool's children: the architecture's public label contract lives here."""

from __future__ import annotations

from typing import Any

from baton_operator.spec import API_VERSION, KIND, Pool

MANAGED_BY = "baton-operator"


def child_name(pool: Pool, role: str) -> str:
    """Name of the workload and Service of ``role`` (prefill, decode, router)."""
    return f"{pool.name}-{role}"


def config_map_name(pool: Pool) -> str:
    return f"{pool.name}-config"


def router_service_account_name(pool: Pool) -> str:
    return f"{pool.name}-router"


def selector_labels(pool: Pool, role: str) -> dict[str, str]:
    """Labels that select one role's pods; immutable in a workload's selector, so never change them."""
    return {
        "app.kubernetes.io/name": "baton",
        "app.kubernetes.io/instance": pool.name,
        "baton.dev/pool": pool.name,
        "baton.dev/role": role,
    }


def labels(pool: Pool, role: str) -> dict[str, str]:
    """The architecture's labels, on every child and pod."""
    return {**selector_labels(pool, role), "app.kubernetes.io/managed-by": MANAGED_BY}


def pool_labels(pool: Pool) -> dict[str, str]:
    """Labels of children that belong to the whole pool (the ConfigMap); role is `pool`."""
    return labels(pool, "pool")


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
