"""Thin kopf handlers: every event about a pool or one of its children triggers that pool's worker.

No change-detecting handlers (on.create/update/delete), so these handlers keep no state in the
objects (no annotations; the only finalizer is the one kopf adds for the autoscaler's timers);
children are deleted by garbage collection through their owner references. All decisions live in the pure modules; all I/O in api.py.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from baton_operator import runtime
from baton_operator.names import MANAGED_BY, MANAGED_BY_LABEL, POOL_LABEL
from baton_operator.spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

CHILD_LABELS = {MANAGED_BY_LABEL: MANAGED_BY, POOL_LABEL: kopf.PRESENT}
# Children whose drift (edits, deletion) the operator corrects, and whose status feeds the pool's.
CHILD_RESOURCES = (
    ("apps", "v1", "statefulsets"),
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("", "v1", "persistentvolumeclaims"),  # spec.model.cache; its phase feeds ModelCacheReady
    ("", "v1", "serviceaccounts"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
)
# Not watched: Secrets (spec.tls). The operator may only get a pool's Secret by name, never list or
# watch Secrets; every reconcile reads it fresh, and the resync corrects a deleted or edited one.


@kopf.on.event(GROUP, VERSION, PLURAL, id="inferencepool_event")
async def inferencepool_event(event: Mapping[str, Any], name: str, namespace: str, **_: Any) -> None:
    controller = runtime.controller()
    if event.get("type") == "DELETED":
        controller.forget(namespace, name)
    else:
        controller.trigger(namespace, name)


async def _child_event(labels: Mapping[str, str], namespace: str, **_: Any) -> None:
    pool = labels.get(POOL_LABEL)
    if pool:
        runtime.controller().trigger(namespace, pool)


async def _cached_child_event(
    event: Mapping[str, Any],
    body: Mapping[str, Any],
    labels: Mapping[str, str],
    namespace: str,
    **kwargs: Any,
) -> None:
    runtime.api().cache.observe(event.get("type"), body)
    await _child_event(labels, namespace, **kwargs)


for _group, _version, _plural in CHILD_RESOURCES:
    kopf.on.event(_group, _version, _plural, labels=CHILD_LABELS, id=f"{_plural}_event")(_cached_child_event)


def _pod_needs_attention(status: Mapping[str, Any], **_: Any) -> bool:
    """Pods matter to the pool's status only when they cannot be scheduled or keep failing."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return True
    return any((cs.get("state") or {}).get("waiting") for cs in status.get("containerStatuses") or [])


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS, when=_pod_needs_attention, id="pods_event")
async def pods_event(labels: Mapping[str, str], namespace: str, **kwargs: Any) -> None:
    await _child_event(labels, namespace, **kwargs)


@kopf.on.cleanup(id="controller_stop")
async def controller_stop(**_: Any) -> None:
    await runtime.shutdown()
