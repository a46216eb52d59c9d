"""The autoscaler's cluster view over the operator's API client: paths, field manager, RBAC fallback."""

from __future__ import annotations

from typing import Any

from baton_operator import runtime
from baton_operator.api import KINDS, ApiError, KubeApi
from baton_operator.autoscaling.actuation import KubeCluster
from baton_operator.autoscaling.controller import FIELD_MANAGER, Workload


class RecordingApi(KubeApi):
    """A KubeApi whose requests are recorded and answered from ``answers`` (path -> body or error)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__(client=object())  # type: ignore[arg-type]  # never used: request is replaced
        self.answers = answers
        self.calls: list[tuple[str, str, Any, list[tuple[str, str]], float]] = []

    def request(self, method, path, body=None, query=None, content_type="application/json", timeout=30.0):  # type: ignore[override]
        self.calls.append((method, path, body, list(query or []), timeout))
        answer = self.answers.get(path)
        if isinstance(answer, ApiError):
            raise answer
        return answer


def test_cluster_wide_paths_have_no_namespace():
    assert KINDS[("v1", "Node")].path("") == "/api/v1/nodes"
    assert KINDS[("v1", "Pod")].path("") == "/api/v1/pods"
    assert KINDS[("v1", "Pod")].path("ns", "p") == "/api/v1/namespaces/ns/pods/p"


def test_set_replicas_applies_only_spec_replicas_with_the_autoscaler_field_manager():
    api = RecordingApi({})
    KubeCluster(api).set_replicas(Workload("StatefulSet", "p-prefill", "ns", 1), 3)
    ((method, path, body, query, timeout),) = api.calls
    assert (method, path) == ("PATCH", "/apis/apps/v1/namespaces/ns/statefulsets/p-prefill")
    assert body["spec"] == {"replicas": 3} and body["kind"] == "StatefulSet"
    assert ("fieldManager", FIELD_MANAGER) in query and ("force", "true") in query
    assert timeout == 5.0


def test_workload_reads_the_role_kind_and_missing_is_none():
    obj = {"spec": {"replicas": 2, "template": {"spec": {"containers": []}}}}
    api = RecordingApi({"/apis/apps/v1/namespaces/ns/deployments/p-decode": obj})
    cluster = KubeCluster(api)
    assert cluster.workload("ns", "p", "decode") == Workload(
        "Deployment", "p-decode", "ns", 2, {"containers": []}, "p", "decode"
    )
    assert cluster.workload("ns", "p", "prefill") is None


def test_capacity_without_rbac_falls_back_and_does_not_ask_again_soon():
    api = RecordingApi({"/api/v1/nodes": ApiError(403, "GET", "/api/v1/nodes", "forbidden")})
    cluster = KubeCluster(api)
    workload = Workload("Deployment", "p-decode", "ns", 1, {}, "p", "decode")
    assert cluster.capacity(workload, 1) is None
    cluster.begin_pass()
    assert cluster.capacity(workload, 1) is None
    assert len(api.calls) == 1


def test_not_started_operator_is_not_leader():
    assert runtime.is_leader() is False
