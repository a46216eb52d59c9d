"""The autoscaler's view of the cluster: a role's workload and pods, GPU capacity, replica writes.

Every call goes through the operator's :class:`~baton_operator.api.KubeApi`. Replicas are set by
server-side apply of the one field ``spec.replicas`` with the field manager ``baton-autoscaler``
(docs/internals.md): the operator applies the rest of the object without ``spec.replicas``, and a
GitOps tool that ignores ``spec.replicas`` never fights either of them. Every call carries a short
request timeout, so a slow API server delays a pass but never hangs it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from baton_operator.api import KINDS, WORKLOADS, ApiError, KubeApi
from baton_operator.autoscaling.capacity import Scheduling, role_capacity, scheduling
from baton_operator.autoscaling.controller import FIELD_MANAGER, Workload
from baton_operator.names import POOL_LABEL, ROLE_LABEL, pool_selector, workload_name

log = logging.getLogger(__name__)
REQUEST_TIMEOUT_S = 5.0
CAPACITY_RETRY_S = 300.0
POD = KINDS[("v1", "Pod")]
NODE = KINDS[("v1", "Node")]
CONFIG_MAP = KINDS[("v1", "ConfigMap")]
ENDPOINT_SLICE = KINDS[("discovery.k8s.io/v1", "EndpointSlice")]


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj["metadata"].get("labels") or {}


class KubeCluster:
    """:class:`controller.Cluster` over the operator's API client."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api
        self._capacity_denied_until = 0.0
        # Lists shared by the roles of one pass (a spike on both roles costs one list of each).
        self._pass_pods: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._pass_cluster: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None

    def workload(self, namespace: str, pool: str, role: str) -> Workload | None:
        kind = WORKLOADS[role]
        name = workload_name(pool, role)
        obj = self._api.get(kind, namespace, name, timeout=REQUEST_TIMEOUT_S)
        if obj is None:
            return None
        spec = obj.get("spec") or {}
        pod_spec = ((spec.get("template") or {}).get("spec")) or {}
        return Workload(kind.kind, name, namespace, int(spec.get("replicas", 1)), pod_spec, pool, role)

    def router_metrics_urls(self, namespace: str, pool: str) -> list[str]:
        """/metrics of every ready router of the pool, from the EndpointSlices of its Service (port
        ``http``); [] when they cannot be read (the caller then scrapes the Service)."""
        from baton_worker.router.discovery import ready_endpoints

        selector = f"kubernetes.io/service-name={workload_name(pool, 'router')}"
        try:
            slices = self._api.list(ENDPOINT_SLICE, namespace, selector, timeout=REQUEST_TIMEOUT_S)
        except ApiError as e:
            log.warning(
                "%s/%s: cannot list the routers' EndpointSlices, scraping the Service: %s", namespace, pool, e
            )
            return []
        return [f"http://{hp}/metrics" for hp in ready_endpoints(slices, "http")]

    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap as JSON (SLO mode's profile), None when it does not exist."""
        return self._api.get(CONFIG_MAP, namespace, name, timeout=REQUEST_TIMEOUT_S)

    def begin_pass(self) -> None:
        """Forget the lists cached by the previous pass."""
        self._pass_pods.clear()
        self._pass_cluster = None

    def scheduling(self, namespace: str, pool: str, role: str) -> Scheduling:
        key = (namespace, pool)
        if key not in self._pass_pods:  # one list of the pool's pods serves every role of a pass
            self._pass_pods[key] = self._api.list(
                POD, namespace, pool_selector(pool), timeout=REQUEST_TIMEOUT_S
            )
        return scheduling(p for p in self._pass_pods[key] if _labels(p).get(ROLE_LABEL) == role)

    def _cluster_snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        """Every node and every live pod, listed once per pass; None when RBAC denies it."""
        if self._pass_cluster is None:
            try:
                nodes = self._api.list(NODE, "", timeout=REQUEST_TIMEOUT_S)
                pods = self._api.list(
                    POD,
                    "",
                    field_selector="status.phase!=Succeeded,status.phase!=Failed",
                    timeout=REQUEST_TIMEOUT_S,
                )
            except ApiError as e:
                if e.status == 403:
                    # RBAC without cluster-wide node/pod reads: fall back to the Unschedulable
                    # signal alone, and ask again later (a grant may come).
                    self._capacity_denied_until = time.monotonic() + CAPACITY_RETRY_S
                    return None
                raise
            self._pass_cluster = (nodes, pods)
        return self._pass_cluster

    def capacity(self, workload: Workload, scheduled: int) -> int | None:
        """GPU capacity for this role, or None when the operator may not list nodes."""
        if time.monotonic() < self._capacity_denied_until:
            return None
        snapshot = self._cluster_snapshot()
        if snapshot is None:
            return None
        nodes_seen, pods_seen = snapshot
        if workload.pool and workload.role:
            # Count this role's placed pods in the same snapshot as the GPUs they use: a pod
            # bound between two lists must not be missed by one and counted by the other.
            scheduled = sum(
                1
                for p in pods_seen
                if p["metadata"].get("namespace") == workload.namespace
                and _labels(p).get(POOL_LABEL) == workload.pool
                and _labels(p).get(ROLE_LABEL) == workload.role
                and (p.get("spec") or {}).get("nodeName")
                and not p["metadata"].get("deletionTimestamp")
            )
        return role_capacity(workload.pod_spec, nodes_seen, pods_seen, scheduled)

    def set_replicas(self, workload: Workload, replicas: int) -> None:
        kind = KINDS[("apps/v1", workload.kind)]
        self._api.set_replicas(
            kind, workload.namespace, workload.name, replicas, FIELD_MANAGER, REQUEST_TIMEOUT_S
        )
