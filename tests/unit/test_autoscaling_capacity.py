"""GPU capacity and scheduling state of a role (pure)."""

from __future__ import annotations

import pytest
from baton_operator.autoscaling.capacity import (
    Scheduling,
    gpu_request,
    node_fits,
    parse_quantity,
    role_capacity,
    scheduling,
)

H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
A100 = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
TOLERATE_GPU = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def node(name: str, labels: dict, gpus: int = 8, taints: list | None = None, cordoned: bool = False) -> dict:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": [GPU_TAINT] if taints is None else taints, "unschedulable": cordoned},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }


def pod_spec(tp: int, selector: dict, tolerations: list | None = None) -> dict:
    return {
        "nodeSelector": selector,
        "tolerations": TOLERATE_GPU if tolerations is None else tolerations,
        "containers": [{"name": "worker", "resources": {"limits": {"nvidia.com/gpu": str(tp)}}}],
    }


def pod_on(node_name: str | None, gpus: int, phase: str = "Running", unschedulable: bool = False) -> dict:
    status: dict = {"phase": phase}
    if unschedulable:
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/7 nodes: gpu",
            }
        ]
    return {
        "metadata": {"name": "p"},
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": gpus}}}],
        },
        "status": status,
    }


NODES = [node("h100-0", H100), node("h100-1", H100), node("a100-0", A100), node("system-0", {}, 0, [])]


@pytest.mark.parametrize(
    "spec,pods,scheduled,want",
    [
        (pod_spec(8, H100), [], 0, 2),
        (pod_spec(4, H100), [], 0, 4),
        (pod_spec(4, H100), [pod_on("h100-0", 4)], 1, 4),  # one placed + 3 more fit
        (pod_spec(8, H100), [pod_on("h100-0", 1)], 0, 1),  # a 1-GPU pod spoils a whole node for TP=8
        (pod_spec(1, A100), [pod_on("a100-0", 8)], 8, 8),
        (pod_spec(1, A100), [pod_on("a100-0", 8, phase="Succeeded")], 0, 8),  # finished pods free GPUs
        (pod_spec(2, H100, tolerations=[]), [], 0, 0),  # does not tolerate the GPU taint
        (pod_spec(2, {"nvidia.com/gpu.product": "B200"}), [], 0, 0),
    ],
)
def test_autoscaling_role_capacity(spec: dict, pods: list, scheduled: int, want: int) -> None:
    assert role_capacity(spec, NODES, pods, scheduled) == want


def test_autoscaling_capacity_unknown_without_gpu_request() -> None:
    assert role_capacity({"containers": [{"name": "c"}]}, NODES, [], 3) is None


def test_autoscaling_cordoned_node_does_not_count() -> None:
    assert role_capacity(pod_spec(8, H100), [node("h100-0", H100, cordoned=True)], [], 0) == 0
    assert not node_fits(node("h100-0", H100, cordoned=True), pod_spec(8, H100))


def test_autoscaling_scheduling_counts() -> None:
    pods = [
        pod_on("h100-0", 8),
        pod_on(None, 8, phase="Pending", unschedulable=True),
        pod_on(None, 8, "Pending"),
    ]
    assert scheduling(pods) == Scheduling(1, 1, ("0/7 nodes: gpu",))


@pytest.mark.parametrize("raw,want", [("8", 8), (8, 8), ("8000m", 8), ("2.0", 2)])
def test_autoscaling_parse_quantity(raw, want: int) -> None:
    assert parse_quantity(raw) == want


def test_autoscaling_gpu_request_sums_containers() -> None:
    spec = {
        "containers": [
            {"resources": {"requests": {"nvidia.com/gpu": "2"}}},
            {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
            {},
        ]
    }
    assert gpu_request(spec) == 3
