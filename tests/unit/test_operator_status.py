"""Status: observed children -> conditions. Pure, table-driven."""

from __future__ import annotations

import pytest
from baton_operator.spec import parse_pool
from baton_operator.status import Observed, compute_status, status_patch, unschedulable_reasons

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
UNSCHED = "0/7 nodes are available: 6 Insufficient nvidia.com/gpu, 1 node(s) didn't match Pod's node affinity/selector."


def pool(decode_auto: bool = False, generation: int = 2):
    decode = {"replicas": 2}
    if decode_auto:
        decode["autoscaling"] = {"enabled": True}
    body = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "generation": generation},
        "spec": {"model": {"source": "builtin://tiny"}, "prefill": {"replicas": 2}, "decode": decode},
    }
    return parse_pool(body, "img")


def workload(desired, ready, updated=None, generation=1, seen=1, replicas=None):
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": seen,
            "replicas": desired if replicas is None else replicas,
            "readyReplicas": ready,
            "updatedReplicas": desired if updated is None else updated,
        },
    }


def pod(role, scheduled=True, message=UNSCHED, waiting=None, name="x"):
    conds = [{"type": "PodScheduled", "status": "True"}]
    if not scheduled:
        conds = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]
    status = {"conditions": conds}
    if waiting:
        status["containerStatuses"] = [{"name": "worker", "state": {"waiting": {"reason": waiting}}}]
    return {"metadata": {"name": name, "labels": {"baton.dev/role": role}}, "status": status}


def cond(status, ctype):
    return next(c for c in status["conditions"] if c["type"] == ctype)


ALL_READY = Observed(prefill=workload(2, 2), decode=workload(2, 2), router=workload(1, 1))

CASES = [
    # name, observed, Ready, Ready reason, Progressing, Degraded, message fragment
    ("all ready", ALL_READY, "True", "AllReplicasReady", "False", "False", "prefill 2/2 ready"),
    ("nothing yet", Observed(), "False", "Creating", "True", "False", "creating prefill, decode, router"),
    (
        "pods starting",
        Observed(prefill=workload(2, 1), decode=workload(2, 2), router=workload(1, 1)),
        "False",
        "PodsNotReady",
        "True",
        "False",
        "prefill 1/2 ready",
    ),
    (
        "rolling out",
        Observed(prefill=workload(2, 2, updated=1), decode=workload(2, 2), router=workload(1, 1)),
        "False",
        "PodsNotReady",
        "True",
        "False",
        "",
    ),
    (
        "controller has not seen new generation",
        Observed(prefill=workload(2, 2, generation=2, seen=1), decode=workload(2, 2), router=workload(1, 1)),
        "False",
        "PodsNotReady",
        "True",
        "False",
        "",
    ),
    (
        "unschedulable",
        Observed(
            prefill=workload(2, 0),
            decode=workload(2, 2),
            router=workload(1, 1),
            pods=[pod("prefill", scheduled=False), pod("decode")],
        ),
        "False",
        "Unschedulable",
        "True",
        "True",
        "prefill pods unschedulable: 0/7 nodes are available: 6 Insufficient nvidia.com/gpu",
    ),
    (
        "crashloop",
        Observed(
            prefill=workload(2, 1),
            decode=workload(2, 2),
            router=workload(1, 1),
            pods=[pod("prefill", waiting="CrashLoopBackOff", name="p-prefill-1")],
        ),
        "False",
        "PodsNotReady",
        "True",
        "True",
        "",
    ),
    (
        "spec error",
        Observed(error="spec.prefill.gpu.type: must be one of H100", error_reason="InvalidSpec"),
        "False",
        "InvalidSpec",
        "True",
        "True",
        "spec.prefill.gpu.type",
    ),
]


@pytest.mark.parametrize(
    ("name", "observed", "ready", "reason", "progressing", "degraded", "fragment"), CASES
)
def test_conditions_table(name, observed, ready, reason, progressing, degraded, fragment):
    st = compute_status(pool(), observed, None, T0)
    assert cond(st, "Ready")["status"] == ready, name
    assert cond(st, "Ready")["reason"] == reason, name
    assert fragment in cond(st, "Ready")["message"], name
    assert cond(st, "Progressing")["status"] == progressing, name
    assert cond(st, "Degraded")["status"] == degraded, name
    assert all(c["observedGeneration"] == 2 for c in st["conditions"])
    assert st["observedGeneration"] == 2


def test_role_blocks_and_summary_and_endpoint():
    st = compute_status(
        pool(), Observed(prefill=workload(2, 1), decode=workload(2, 2), router=workload(1, 1)), None, T0
    )
    assert st["prefill"] == {"replicas": 2, "readyReplicas": 1, "desiredReplicas": 2, "summary": "1/2"}
    assert st["decode"]["summary"] == "2/2"
    assert st["router"] == {"replicas": 1, "readyReplicas": 1}
    assert st["endpoint"] == "http://p-router.ns.svc:8000"
    lb = {"status": {"loadBalancer": {"ingress": [{"ip": "10.1.2.3"}]}}}
    assert compute_status(pool(), Observed(router_service=lb), None, T0)["endpoint"] == "http://10.1.2.3:8000"


def test_last_transition_time_moves_only_on_flip():
    first = compute_status(pool(), Observed(prefill=workload(2, 1)), None, T0)
    same = compute_status(pool(), Observed(prefill=workload(2, 0)), first, T1)
    assert cond(same, "Ready")["lastTransitionTime"] == T0  # still False, message changed
    flipped = compute_status(pool(), ALL_READY, same, T1)
    assert cond(flipped, "Ready")["lastTransitionTime"] == T1
    assert cond(flipped, "Degraded")["lastTransitionTime"] == T0  # stayed False


def test_autoscaled_role_leaves_autoscaler_fields_alone_and_reads_live_replicas():
    observed = Observed(prefill=workload(2, 2), decode=workload(5, 3), router=workload(1, 1))
    st = compute_status(
        pool(decode_auto=True), observed, {"decode": {"desiredReplicas": 5, "queueDepth": 9}}, T0
    )
    assert "desiredReplicas" not in st["decode"]
    assert "queueDepth" not in st["decode"]
    assert st["decode"]["summary"] == "3/5"
    assert cond(st, "Ready")["status"] == "False"


@pytest.mark.parametrize(
    ("autoscaling", "status", "reason"),
    [
        (None, "False", "AwaitingMetrics"),
        (
            {"metricsAvailable": False, "message": "GET http://x/metrics: connection refused"},
            "False",
            "MetricsUnavailable",
        ),
        ({"metricsAvailable": True, "limitedBy": "maxReplicas"}, "True", "ScalingLimited"),
        ({"metricsAvailable": True, "limitedBy": ""}, "True", "MetricsAvailable"),
    ],
)
def test_scaling_active_condition_from_autoscaler_status(autoscaling, status, reason):
    prev = {"autoscaling": autoscaling} if autoscaling else {}
    st = compute_status(pool(decode_auto=True), ALL_READY, prev, T0)
    c = cond(st, "ScalingActive")
    assert (c["status"], c["reason"]) == (status, reason)
    if autoscaling and autoscaling.get("message"):
        assert c["message"] == autoscaling["message"]
    # The API server refuses a condition whose observedGeneration is not an integer.
    assert all(isinstance(x["observedGeneration"], int) for x in st["conditions"])


def test_keda_mode_scaling_condition_carries_the_generation():
    body = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "generation": 7},
        "spec": {
            "model": {"source": "builtin://tiny"},
            "autoscaling": {"mode": "keda"},
            "decode": {"autoscaling": {"enabled": True}},
        },
    }
    st = compute_status(parse_pool(body, "img"), ALL_READY, {}, T0)
    c = cond(st, "ScalingActive")
    assert (c["status"], c["reason"], c["observedGeneration"]) == ("True", "KedaManaged", 7)


def test_no_scaling_condition_without_autoscaling():
    st = compute_status(pool(), ALL_READY, None, T0)
    assert [c["type"] for c in st["conditions"]] == ["Ready", "Progressing", "Degraded"]


def test_status_patch_is_empty_when_nothing_changed():
    st = compute_status(pool(), ALL_READY, None, T0)
    again = compute_status(pool(), ALL_READY, st, T1)
    live = {**st, "autoscaling": {"metricsAvailable": True}, "decode": {**st["decode"], "queueDepth": 3}}
    assert status_patch(again, live) == {}
    changed = compute_status(
        pool(), Observed(prefill=workload(2, 1), decode=workload(2, 2), router=workload(1, 1)), st, T1
    )
    patch = status_patch(changed, live)
    assert set(patch) == {"conditions", "prefill"}
    assert patch["prefill"] == {"readyReplicas": 1, "summary": "1/2"}


def test_unschedulable_reasons_ignores_scheduled_and_terminating_pods():
    terminating = pod("decode", scheduled=False)
    terminating["metadata"]["deletionTimestamp"] = T0
    assert unschedulable_reasons([pod("prefill"), terminating]) == {}
    assert unschedulable_reasons([pod("decode", scheduled=False, message="no nodes")]) == {
        "decode": "no nodes"
    }
