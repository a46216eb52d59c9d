"""All of the operator's Kubernetes API I/O: reads, server-side apply, status patches, Events.

Children are applied with server-side apply (field manager ``baton-operator``, force) only when
the live object differs from the desired one (desired ⊆ live), so a no-op resync writes nothing.
Every write is counted (``writes``) and exported as ``baton_operator_api_writes_total``.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes
from prometheus_client import Counter as PromCounter

from baton_operator.cache import ChildCache
from baton_operator.names import WORKLOAD_KINDS
from baton_operator.spec import API_VERSION, KIND, PLURAL

log = logging.getLogger(__name__)

FIELD_MANAGER = "baton-operator"
REQUEST_TIMEOUT_S = 30.0
WRITES = PromCounter("baton_operator_api_writes", "API writes made by the operator", ["verb", "kind"])


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str

    def path(self, namespace: str, name: str = "") -> str:
        """The object's path; an empty ``namespace`` means cluster-wide (nodes, all pods)."""
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        scope = f"/namespaces/{namespace}" if namespace else ""
        suffix = f"/{name}" if name else ""
        return f"{base}{scope}/{self.plural}{suffix}"


KINDS: dict[tuple[str, str], Kind] = {
    (k.api_version, k.kind): k
    for k in (
        Kind("v1", "ConfigMap", "configmaps"),
        Kind("v1", "Secret", "secrets"),
        Kind("v1", "Service", "services"),
        Kind("v1", "ServiceAccount", "serviceaccounts"),
        Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        Kind("v1", "Pod", "pods"),
        Kind("v1", "Node", "nodes"),
        Kind("v1", "Event", "events"),
        Kind("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"),
        Kind("apps/v1", "StatefulSet", "statefulsets"),
        Kind("apps/v1", "Deployment", "deployments"),
        Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
        Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
        Kind("rbac.authorization.k8s.io/v1", "Role", "roles"),
        Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
        Kind("keda.sh/v1alpha1", "ScaledObject", "scaledobjects"),
        Kind("coordination.k8s.io/v1", "Lease", "leases"),
        Kind(API_VERSION, KIND, PLURAL),
    )
}
POOL = KINDS[(API_VERSION, KIND)]
# The role workloads the autoscaler scales.
WORKLOADS: dict[str, Kind] = {role: KINDS[("apps/v1", kind)] for role, kind in WORKLOAD_KINDS.items()}


class ApiError(RuntimeError):
    """A non-2xx answer; ``status`` is the HTTP code, ``message`` the server's explanation."""

    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying: conflicts, throttling, server and gateway errors, timeouts."""
        return self.status in (0, 409, 429) or self.status >= 500


def is_subset(desired: Any, live: Any) -> bool:
    """True when every field of ``desired`` has the same value in ``live`` (lists compared item by item).

    The API server adds defaults (protocol, dnsPolicy, ...) to live objects; those extra fields
    are not drift. Everything the operator sets must be there unchanged.
    """
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and is_subset(v, live[k]) for k, v in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(live, list):
            return False
        if desired and all(isinstance(d, Mapping) and "name" in d for d in desired):
            # Lists keyed by name (containers, env, ports, volumes): entries other managers added are
            # theirs; the operator's entries must all be present and unchanged, in its order.
            named = [item for item in live if isinstance(item, Mapping) and "name" in item]
            by_name = {item["name"]: item for item in named}
            ours = [item["name"] for item in named if item["name"] in {d["name"] for d in desired}]
            return ours == [d["name"] for d in desired] and all(
                is_subset(d, by_name[d["name"]]) for d in desired
            )
        return len(desired) == len(live) and all(is_subset(d, v) for d, v in zip(desired, live, strict=True))
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return desired == live
    return desired == live or str(desired) == str(live)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeApi:
    """Thin synchronous client over the kubernetes package's transport (auth, TLS, kubeconfig)."""

    def __init__(
        self, client: kubernetes.client.ApiClient | None = None, cache: ChildCache | None = None
    ) -> None:
        self._client = client or kubernetes.client.ApiClient()
        self.cache = cache or ChildCache()
        self._lock = threading.Lock()
        self.writes: Counter[str] = Counter()

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeApi:
        """``kubeconfig`` when given; else in-cluster credentials when running in a pod, else the
        default kubeconfig (KUBECONFIG or ~/.kube/config)."""
        config = kubernetes.client.Configuration()
        if kubeconfig:
            kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
        else:
            try:
                kubernetes.config.load_incluster_config(client_configuration=config)
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(client_configuration=config)
        # Reconciles run in several threads; urllib3's default pool of 4 would churn connections.
        config.connection_pool_maxsize = 32
        return cls(kubernetes.client.ApiClient(configuration=config))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> dict[str, Any] | None:
        """One API call. Returns the decoded body, None on 404 for GET; raises ApiError otherwise."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            params = self._client.param_serialize(
                method=method,
                resource_path=path,
                query_params=list(query or []),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._client.call_api(*params, _request_timeout=timeout)
            response.read()
        except Exception as e:  # urllib3 and TLS errors: the API server is unreachable right now
            raise ApiError(0, method, path, f"{type(e).__name__}: {e}") from e
        if method != "GET":
            kind = _resource_of(path)
            with self._lock:
                self.writes[f"{method} {kind}"] += 1
            WRITES.labels(method, kind).inc()
        if response.status == 404 and method == "GET":
            return None
        text = response.data.decode() if isinstance(response.data, bytes) else str(response.data or "")
        if response.status >= 300:
            try:
                message = json.loads(text).get("message", text)
            except ValueError:
                message = text
            raise ApiError(response.status, method, path, message)
        return json.loads(text) if text else {}

    def close(self) -> None:
        self._client.close()

    @property
    def write_count(self) -> int:
        with self._lock:
            return sum(self.writes.values())

    # --- children -------------------------------------------------------------------------

    def get(
        self, kind: Kind, namespace: str, name: str, timeout: float = REQUEST_TIMEOUT_S
    ) -> dict[str, Any] | None:
        return self.request("GET", kind.path(namespace, name), timeout=timeout)

    def apply(
        self,
        manifest: Mapping[str, Any],
        field_manager: str = FIELD_MANAGER,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Server-side apply of ``manifest`` with ``field_manager``, taking over conflicts."""
        kind = KINDS[(manifest["apiVersion"], manifest["kind"])]
        meta = manifest["metadata"]
        query = [("fieldManager", field_manager), ("force", "true")]
        result = self.request(
            "PATCH",
            kind.path(meta["namespace"], meta["name"]),
            manifest,
            query,
            "application/apply-patch+yaml",
            timeout,
        )
        return result or {}

    def ensure(self, manifest: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Make the live object match ``manifest``.

        Returns ("unchanged" | "created" | "updated", the live object afterwards); "unchanged"
        made no write.
        """
        kind = KINDS[(manifest["apiVersion"], manifest["kind"])]
        meta = manifest["metadata"]
        cached = self.cache.get(ChildCache.key_of(manifest))
        if cached is not None and is_subset(_comparable(manifest), cached):
            return "unchanged", cached
        live = self.get(kind, meta["namespace"], meta["name"])
        if live is not None and is_subset(_comparable(manifest), live):
            return "unchanged", live
        applied = self.apply(manifest)
        return ("created" if live is None else "updated"), applied

    def delete(self, kind: Kind, namespace: str, name: str, uid: str) -> bool:
        """Delete one object if it is still the one with ``uid`` (a precondition, so a re-created
        namesake is left alone). Returns False when it was already gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}}
        try:
            self.request("DELETE", kind.path(namespace, name), body)
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    def list(
        self,
        kind: Kind,
        namespace: str,
        label_selector: str = "",
        field_selector: str = "",
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> list[dict[str, Any]]:
        """Objects of ``kind`` in ``namespace`` ("" lists every namespace, or a cluster-scoped kind)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        if field_selector:
            query.append(("fieldSelector", field_selector))
        result = self.request("GET", kind.path(namespace), query=query, timeout=timeout)
        return list((result or {}).get("items") or [])

    def set_replicas(
        self, kind: Kind, namespace: str, name: str, replicas: int, field_manager: str, timeout: float
    ) -> None:
        """Server-side apply of ``spec.replicas`` alone, so ``field_manager`` owns that one field and
        the operator's apply of the rest of the workload never fights it."""
        manifest = {
            "apiVersion": kind.api_version,
            "kind": kind.kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        self.apply(manifest, field_manager, timeout)

    # --- the pool -------------------------------------------------------------------------

    def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(POOL, namespace, name)

    def patch_pool_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], timeout: float = REQUEST_TIMEOUT_S
    ) -> None:
        """Merge-patch the status subresource (other writers' fields stay untouched)."""
        path = POOL.path(namespace, name) + "/status"
        self.request(
            "PATCH",
            path,
            {"status": dict(patch)},
            content_type="application/merge-patch+json",
            timeout=timeout,
        )

    def post_event(self, pool: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``pool``; failures are logged, never raised (events are best effort)."""
        meta = pool.get("metadata") or {}
        namespace = meta.get("namespace", "default")
        stamp = now_rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta.get('name')}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
        }
        try:
            self.request("POST", KINDS[("v1", "Event")].path(namespace), event)
        except ApiError as e:
            log.warning("could not post event %s for %s/%s: %s", reason, namespace, meta.get("name"), e)


def _resource_of(path: str) -> str:
    """The resource a request path writes, e.g. "statefulsets" or "inferencepools/status"."""
    parts = path.strip("/").split("/")
    if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
        i = parts.index("namespaces") + 2
        return parts[i] + ("/" + parts[-1] if len(parts) > i + 2 else "")
    return parts[-1]


def _comparable(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a manifest the API server echoes back unchanged (apiVersion/kind aside)."""
    return {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")}
