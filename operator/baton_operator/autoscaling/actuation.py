"""The autoscaler's Kubernetes I/O: read a role's workload and pods, set replicas, write status.

Replicas are set by server-side apply of the one field ``spec.replicas`` with the field manager
``baton-autoscaler`` (docs/internals.md): the operator applies the rest of the object without
``spec.replicas``, and a GitOps tool that ignores ``spec.replicas`` never fights either of them.
Every call carries a request timeout, so a slow API server delays a pass but never hangs it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from baton_operator.autoscaling.capacity import Scheduling, role_capacity, scheduling
from baton_operator.autoscaling.controller import FIELD_MANAGER, Workload

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "baton.dev", "v1alpha1", "inferencepools"
KINDS = {"prefill": "StatefulSet", "decode": "Deployment"}
REQUEST_TIMEOUT_S = 5.0
CAPACITY_RETRY_S = 300.0

_lock = threading.Lock()
_api_client: Any = None


def api_client() -> Any:
    """A kubernetes ApiClient: the in-cluster account, else KUBECONFIG / ~/.kube/config."""
    global _api_client
    with _lock:
        if _api_client is None:
            from kubernetes import client, config

            # The operator's precedence (api.KubeApi.from_environment): in-cluster first, then
            # KUBECONFIG (which `baton operator --kubeconfig` sets) or ~/.kube/config.
            conf = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=conf)
            except config.ConfigException:
                config.load_kube_config(client_configuration=conf)
            _api_client = client.ApiClient(configuration=conf)
        return _api_client


def _json(response: Any) -> dict[str, Any]:
    """The body of a raw (``_preload_content=False``) response: plain JSON, no model objects,
    which matters when listing every pod of a cluster on each scale-up."""
    return json.loads(response.data)


def workload_name(pool: str, role: str) -> str:
    """Name of a role's workload, as the operator's builders name it (``<pool>-<role>``)."""
    return f"{pool}-{role}"


class KubeCluster:
    """:class:`controller.Cluster` over the Kubernetes API."""

    def __init__(self, client: Any = None) -> None:
        from kubernetes import client as k8s

        self._api = client or api_client()
        self._apps = k8s.AppsV1Api(self._api)
        self._core = k8s.CoreV1Api(self._api)
        self._custom = k8s.CustomObjectsApi(self._api)
        self._capacity_denied_until = 0.0
        # Lists shared by the roles of one pass (a spike on both roles costs one list of each).
        self._pass_pods: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._pass_cluster: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None

    def _get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        read = (
            self._apps.read_namespaced_stateful_set
            if kind == "StatefulSet"
            else self._apps.read_namespaced_deployment
        )
        try:
            return _json(read(name, namespace, _request_timeout=REQUEST_TIMEOUT_S, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def workload(self, namespace: str, pool: str, role: str) -> Workload | None:
        kind = KINDS[role]
        name = workload_name(pool, role)
        obj = self._get(kind, namespace, name)
        if obj is None:
            return None
        spec = obj.get("spec") or {}
        pod_spec = ((spec.get("template") or {}).get("spec")) or {}
        return Workload(kind, name, namespace, int(spec.get("replicas", 1)), pod_spec, pool, role)

    def _pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        pods = self._core.list_namespaced_pod(
            namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_S, _preload_content=False
        )
        return list(_json(pods).get("items") or [])

    def router_metrics_urls(self, namespace: str, pool: str) -> list[str]:
        """/metrics of every ready router of the pool, from the EndpointSlices of its Service (port
        ``http``); [] when they cannot be read (the caller then scrapes the Service)."""
        from baton_worker.router.discovery import ready_endpoints
        from kubernetes import client as k8s
        from kubernetes.client.exceptions import ApiException

        selector = f"kubernetes.io/service-name={workload_name(pool, 'router')}"
        try:
            slices = k8s.DiscoveryV1Api(self._api).list_namespaced_endpoint_slice(
                namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_S, _preload_content=False
            )
        except (ApiException, OSError) as e:
            log.warning(
                "%s/%s: cannot list the routers' EndpointSlices, scraping the Service: %s", namespace, pool, e
            )
            return []
        return [f"http://{hp}/metrics" for hp in ready_endpoints(_json(slices).get("items") or [], "http")]

    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap as JSON (SLO mode's profile), None when it does not exist."""
        from kubernetes.client.exceptions import ApiException

        try:
            return _json(
                self._core.read_namespaced_config_map(
                    name, namespace, _request_timeout=REQUEST_TIMEOUT_S, _preload_content=False
                )
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def begin_pass(self) -> None:
        """Forget the lists cached by the previous pass."""
        self._pass_pods.clear()
        self._pass_cluster = None

    def scheduling(self, namespace: str, pool: str, role: str) -> Scheduling:
        key = (namespace, pool)
        if key not in self._pass_pods:  # one list of the pool's pods serves every role of a pass
            self._pass_pods[key] = self._pods(namespace, f"baton.dev/pool={pool}")
        return scheduling(
            p
            for p in self._pass_pods[key]
            if (p["metadata"].get("labels") or {}).get("baton.dev/role") == role
        )

    def capacity(self, workload: Workload, scheduled: int) -> int | None:
        """GPU capacity for this role, or None when the operator may not list nodes."""
        from kubernetes.client.exceptions import ApiException

        if time.monotonic() < self._capacity_denied_until:
            return None
        if self._pass_cluster is None:  # nodes and pods listed once per pass, for every role
            try:
                nodes = self._core.list_node(_request_timeout=REQUEST_TIMEOUT_S, _preload_content=False)
                pods = self._core.list_pod_for_all_namespaces(
                    field_selector="status.phase!=Succeeded,status.phase!=Failed",
                    _request_timeout=REQUEST_TIMEOUT_S,
                    _preload_content=False,
                )
            except ApiException as e:
                if e.status == 403:
                    # RBAC without cluster-wide node/pod reads: fall back to the Unschedulable
                    # signal alone, and ask again later (a grant may come).
                    self._capacity_denied_until = time.monotonic() + CAPACITY_RETRY_S
                    return None
                raise
            self._pass_cluster = (list(_json(nodes).get("items") or []), list(_json(pods).get("items") or []))
        nodes_seen, pods_seen = self._pass_cluster
        if workload.pool and workload.role:
            # Count this role's placed pods in the same snapshot as the GPUs they use: a pod
            # bound between two lists must not be missed by one and counted by the other.
            scheduled = sum(
                1
                for p in pods_seen
                if p["metadata"].get("namespace") == workload.namespace
                and (p["metadata"].get("labels") or {}).get("baton.dev/pool") == workload.pool
                and (p["metadata"].get("labels") or {}).get("baton.dev/role") == workload.role
                and (p.get("spec") or {}).get("nodeName")
                and not p["metadata"].get("deletionTimestamp")
            )
        return role_capacity(workload.pod_spec, nodes_seen, pods_seen, scheduled)

    def set_replicas(self, workload: Workload, replicas: int) -> None:
        body = {
            "apiVersion": "apps/v1",
            "kind": workload.kind,
            "metadata": {"name": workload.name, "namespace": workload.namespace},
            "spec": {"replicas": replicas},
        }
        patch = (
            self._apps.patch_namespaced_stateful_set
            if workload.kind == "StatefulSet"
            else self._apps.patch_namespaced_deployment
        )
        patch(
            workload.name,
            workload.namespace,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
            _request_timeout=REQUEST_TIMEOUT_S,
        )

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the pool's status subresource with the autoscaler's fields."""
        self._custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": dict(status)},
            _content_type="application/merge-patch+json",
            _request_timeout=REQUEST_TIMEOUT_S,
        )
