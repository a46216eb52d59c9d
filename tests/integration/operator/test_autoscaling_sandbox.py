"""The built-in autoscaler end to end on the sandbox: a real operator process, real API server,
scheduler and kwok GPU nodes, and a queue-depth endpoint the test controls (the pool's metricsUrl).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from baton_dev.queue_endpoint import QueueEndpoint
from baton_dev.sandbox.handle import Sandbox
from baton_dev.sandbox.operator_proc import OperatorProcess
from baton_dev.scenario import (
    Replicas,
    RoleKnobs,
    autoscaled_pool,
    pinned,
    private_gpu_node,
    wait_until,
)

pytestmark = pytest.mark.sandbox

INTERVAL_S = 5  # the default intervalSeconds
WINDOW_S = 6
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
GPU = "nvidia.com/gpu"
PREFILL = RoleKnobs(min_replicas=1, max_replicas=4, target_queue_depth=4, gpu="H100", scale_down_s=WINDOW_S)
DECODE = RoleKnobs(min_replicas=1, max_replicas=4, target_queue_depth=8, gpu="A100", scale_down_s=WINDOW_S)


@pytest.fixture(scope="module")
def namespace(sandbox: Sandbox) -> Iterator[str]:
    name = f"autoscale-{uuid.uuid4().hex[:6]}"
    sandbox.kubectl("create", "namespace", name)
    wait_until(
        lambda: sandbox.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        30,
        f"default ServiceAccount in {name}",
        poll_s=0.2,
    )
    yield name
    sandbox.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(operator_process: Any) -> OperatorProcess:
    """The session's `baton operator` (all namespaces, under the chart's RBAC, which grants the
    `list nodes` the capacity check needs). It must be the only autoscaler of these pools: a
    second operator watching this namespace would scale them on its own samples too."""
    return operator_process.process


def _log_tail(op: OperatorProcess) -> str:
    return "\n".join(op.log.read_text(errors="replace").splitlines()[-30:])


def _status(sandbox: Sandbox, ns: str, name: str) -> dict[str, Any]:
    return sandbox.kubectl_json("get", "inferencepool", name, "-n", ns).get("status") or {}


def _nodes_of(sandbox: Sandbox, ns: str, pool: str, role: str) -> list[str]:
    pods = sandbox.kubectl_json("get", "pods", "-n", ns, "-l", f"baton.dev/pool={pool},baton.dev/role={role}")
    return [
        p["spec"].get("nodeName") or "" for p in pods["items"] if not p["metadata"].get("deletionTimestamp")
    ]


def _gpu_product(sandbox: Sandbox, node: str) -> str:
    return sandbox.kubectl_json("get", "node", node)["metadata"]["labels"].get("nvidia.com/gpu.product", "")


def _events(sandbox: Sandbox, ns: str, pool: str) -> list[dict[str, Any]]:
    items = sandbox.kubectl_json("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={pool}")
    return items["items"]


@pytest.fixture(scope="module")
def private_nodes(sandbox: Sandbox) -> Iterator[str]:
    """One private H100 and one private A100 node (8 GPUs each); yields their tag.

    The sandbox is shared: other tests may fill its GPU pools, and then the autoscaler rightly
    adds nothing. Pinning the pools here to their own nodes keeps the expected counts exact.
    """
    tag = uuid.uuid4().hex[:6]
    nodes = [private_gpu_node(tag, "H100"), private_gpu_node(tag, "A100")]
    for node in nodes:
        sandbox.kubectl("create", "-f", "-", input=json.dumps(node))
    yield tag
    for node in nodes:
        sandbox.kubectl("delete", "node", node["metadata"]["name"], "--wait=false", check=False)


@pytest.fixture(scope="module")
def spiked_pool(
    sandbox: Sandbox, namespace: str, operator: OperatorProcess, private_nodes: str
) -> Iterator[tuple[str, QueueEndpoint]]:
    """A pool pinned to the private nodes, at minReplicas with the queue at zero, and its endpoint."""
    endpoint = QueueEndpoint()
    pool = "spiky"
    prefill, decode = pinned(PREFILL, private_nodes), pinned(DECODE, private_nodes)
    sandbox.apply([autoscaled_pool(pool, namespace, endpoint.url, INTERVAL_S, prefill, decode)])
    yield pool, endpoint
    endpoint.stop()


def test_autoscaling_spike_scales_both_roles_within_two_intervals(
    sandbox: Sandbox, namespace: str, operator: OperatorProcess, spiked_pool: tuple[str, QueueEndpoint]
) -> None:
    pool, endpoint = spiked_pool
    replicas = Replicas(sandbox.kubeconfig, namespace, pool)
    try:
        wait_until(
            lambda: replicas.get("prefill") == 1 and replicas.get("decode") == 1,
            60,
            f"both roles at minReplicas (operator log:\n{_log_tail(operator)})",
            poll_s=0.2,
        )
        # Wait for a complete pass (status written) and one more scrape, so the spike lands at a
        # random point of a steady cycle, not during the operator's start-up.
        wait_until(
            lambda: (
                (_status(sandbox, namespace, pool).get("autoscaling") or {}).get("metricsAvailable") is True
            ),
            60,
            f"a first autoscaling pass (operator log:\n{_log_tail(operator)})",
            poll_s=0.3,
        )
        seen = len(endpoint.scrapes)
        wait_until(lambda: len(endpoint.scrapes) > seen, 3 * INTERVAL_S, "a scrape of the endpoint")
        t0 = time.time()
        endpoint.set(prefill=16, decode=32)
        t_prefill = wait_until(lambda: replicas.get("prefill") == 4, 4 * INTERVAL_S, "prefill 1 -> 4")
        t_decode = wait_until(lambda: replicas.get("decode") == 4, 4 * INTERVAL_S, "decode 1 -> 4")
        reaction = max(t_prefill, t_decode) - t0
        print(f"reaction {reaction:.2f} s (interval {INTERVAL_S} s)")
        assert reaction <= 2 * INTERVAL_S, f"took {reaction:.2f} s, more than two intervals"
    finally:
        replicas.close()

    def status_reports() -> bool:
        st = _status(sandbox, namespace, pool)
        p, d = st.get("prefill") or {}, st.get("decode") or {}
        return (
            p.get("desiredReplicas") == 4
            and p.get("queueDepth") == 16
            and d.get("desiredReplicas") == 4
            and str(p.get("lastScaleReason", "")).startswith("ScaleUp")
            and bool(p.get("lastScaleTime"))
            and (st.get("autoscaling") or {}).get("metricsAvailable") is True
        )

    wait_until(status_reports, 10, "status with desiredReplicas, queueDepth, lastScale*", poll_s=0.3)
    reasons = [e["reason"] for e in _events(sandbox, namespace, pool)]
    assert reasons.count("ScaleUp") >= 2, reasons


def test_autoscaling_scaled_pods_land_on_their_gpu_pools(
    sandbox: Sandbox, namespace: str, spiked_pool: tuple[str, QueueEndpoint]
) -> None:
    pool, _ = spiked_pool

    def placed(role: str) -> bool:
        nodes = _nodes_of(sandbox, namespace, pool, role)
        return len(nodes) == 4 and all(nodes)

    wait_until(
        lambda: placed("prefill") and placed("decode"), 90, "4 prefill and 4 decode pods scheduled", 0.5
    )
    assert {_gpu_product(sandbox, n) for n in _nodes_of(sandbox, namespace, pool, "prefill")} == {H100}
    assert {_gpu_product(sandbox, n) for n in _nodes_of(sandbox, namespace, pool, "decode")} == {A100}


def test_autoscaling_drop_waits_for_window_then_returns_to_min(
    sandbox: Sandbox, namespace: str, spiked_pool: tuple[str, QueueEndpoint]
) -> None:
    pool, endpoint = spiked_pool
    replicas = Replicas(sandbox.kubeconfig, namespace, pool)
    try:
        assert (replicas.get("prefill"), replicas.get("decode")) == (4, 4)
        t1 = time.time()
        endpoint.set(prefill=0, decode=0)
        # A scale-down needs a full window of low samples, and the first one comes after t1.
        while time.time() < t1 + WINDOW_S - 0.2:
            assert (replicas.get("prefill"), replicas.get("decode")) == (4, 4), (
                f"scaled down {time.time() - t1:.1f} s after the drop, window is {WINDOW_S} s"
            )
            time.sleep(0.1)
        t_down = wait_until(
            lambda: replicas.get("prefill") == 1 and replicas.get("decode") == 1,
            3 * INTERVAL_S,
            "both roles back at minReplicas",
        )
        print(f"scale-down {t_down - t1:.2f} s after the drop (window {WINDOW_S} s)")
    finally:
        replicas.close()
    reasons = [e["reason"] for e in _events(sandbox, namespace, pool)]
    assert reasons.count("ScaleDown") >= 2, reasons


def test_autoscaling_unreachable_metrics_hold_replicas_and_show_condition(
    sandbox: Sandbox, namespace: str, spiked_pool: tuple[str, QueueEndpoint]
) -> None:
    pool, endpoint = spiked_pool
    replicas = Replicas(sandbox.kubeconfig, namespace, pool)
    try:
        endpoint.set(prefill=8, decode=16)
        wait_until(
            lambda: replicas.get("prefill") == 2 and replicas.get("decode") == 2, 4 * INTERVAL_S, "2 and 2"
        )
        endpoint.stop()  # the port closes: connection refused from now on

        def condition() -> dict[str, Any]:
            st = _status(sandbox, namespace, pool)
            conds = {c["type"]: c for c in st.get("conditions") or []}
            return {"autoscaling": st.get("autoscaling") or {}, "scaling": conds.get("ScalingActive") or {}}

        def held() -> bool:
            auto = condition()["autoscaling"]
            return auto.get("metricsAvailable") is False and "refused" in str(auto.get("message")).lower()

        wait_until(
            held, 5 * INTERVAL_S, "status.autoscaling: metricsAvailable false, connection refused", 0.3
        )
        got = condition()
        assert endpoint.url in got["autoscaling"]["message"], got
        # Held through longer than the scale-down window: no sample, no decision to shrink.
        t = time.time()
        while time.time() < t + WINDOW_S + 2 * INTERVAL_S:
            assert (replicas.get("prefill"), replicas.get("decode")) == (2, 2)
            assert held(), condition()
            time.sleep(0.2)
        wait_until(
            lambda: condition()["scaling"].get("status") == "False",
            30,
            "condition ScalingActive False (written by the operator's status)",
            poll_s=0.5,
        )
        assert condition()["scaling"]["reason"] == "MetricsUnavailable"
    finally:
        replicas.close()
    assert "MetricsUnavailable" in [e["reason"] for e in _events(sandbox, namespace, pool)]


@pytest.fixture
def private_h100_node(sandbox: Sandbox) -> Iterator[tuple[str, str]]:
    """A private 16-GPU H100 node: capacity for exactly 2 pods of TP=8."""
    tag = uuid.uuid4().hex[:6]
    node = private_gpu_node(tag, "H100", gpus=16)
    sandbox.kubectl("create", "-f", "-", input=json.dumps(node))
    yield node["metadata"]["name"], tag
    sandbox.kubectl("delete", "node", node["metadata"]["name"], "--wait=false", check=False)


def test_autoscaling_stops_at_what_the_gpus_can_run(
    sandbox: Sandbox, namespace: str, operator: OperatorProcess, private_h100_node: tuple[str, str]
) -> None:
    """TP=8 prefill pods pinned to a 16-GPU node: a queue asking for 4 replicas gets 2, every
    pod is placed (none left Pending), and the status says what limits it."""
    node, tag = private_h100_node
    big = pinned(RoleKnobs(max_replicas=4, target_queue_depth=4, tensor_parallel_size=8, gpu="H100"), tag)
    pool = "wide"
    with QueueEndpoint() as endpoint:
        endpoint.set(prefill=16, decode=0)
        sandbox.apply([autoscaled_pool(pool, namespace, endpoint.url, INTERVAL_S, big, pinned(DECODE, tag))])

        def limited() -> bool:
            st = _status(sandbox, namespace, pool)
            return "prefill:InsufficientCapacity" in str((st.get("autoscaling") or {}).get("limitedBy") or "")

        replicas = Replicas(sandbox.kubeconfig, namespace, pool)
        try:
            wait_until(
                lambda: replicas.get("prefill") == 2 and limited(),
                60,
                f"prefill at 2, limited by capacity (log:\n{_log_tail(operator)})",
                0.5,
            )
            wait_until(
                lambda: _nodes_of(sandbox, namespace, pool, "prefill") == [node, node],
                60,
                "2 pods on the node",
                0.5,
            )
            # It stays there while the queue still asks for 4: no creeping up, no flapping.
            t = time.time()
            while time.time() < t + 2 * INTERVAL_S:
                assert replicas.get("prefill") == 2
                time.sleep(0.2)
        finally:
            replicas.close()
        print(f"prefill held at 2 on a 16-GPU node: {_status(sandbox, namespace, pool)['autoscaling']}")
    sandbox.kubectl("delete", "inferencepool", pool, "-n", namespace, "--wait=false", check=False)
