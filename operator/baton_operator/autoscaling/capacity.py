"""How many pods of a role the cluster can run, from nodes and pods as the API returns them (pure).

The autoscaler asks this only before adding replicas, so that it never asks for pods that cannot
be placed. The count is GPU-based: a role's pod needs ``nvidia.com/gpu: tensorParallelSize`` on a
node that matches the pod template's nodeSelector and whose taints it tolerates. CPU and memory
are not counted (GPU nodes have plenty of both); a template without a GPU request gives None
(no GPU limit known).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GPU = "nvidia.com/gpu"


@dataclass(frozen=True)
class Scheduling:
    """The scheduler's view of a role's pods: placed on a node, or reported unschedulable."""

    scheduled: int
    unschedulable: int
    messages: tuple[str, ...] = ()


def parse_quantity(value: Any) -> int:
    """An integer resource quantity (GPUs are whole devices): "8", 8, "8000m" -> 8."""
    text = str(value).strip()
    if text.endswith("m"):
        return int(text[:-1]) // 1000
    return int(float(text))


def gpu_request(pod_spec: Mapping[str, Any]) -> int:
    """GPUs one pod of ``pod_spec`` requests (limits count when requests are absent, as in k8s)."""
    total = 0
    for c in pod_spec.get("containers") or []:
        res = c.get("resources") or {}
        amount = (res.get("requests") or {}).get(GPU, (res.get("limits") or {}).get(GPU))
        if amount is not None:
            total += parse_quantity(amount)
    return total


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Whether a pod with ``tolerations`` tolerates one node ``taint`` (NoSchedule/NoExecute)."""
    if taint.get("effect") == "PreferNoSchedule":
        return True
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t.get("key") == taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""):
            return True
    return False


def node_fits(node: Mapping[str, Any], pod_spec: Mapping[str, Any]) -> bool:
    """Node labels match the nodeSelector, the node is schedulable and its taints are tolerated."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    labels = meta.get("labels") or {}
    if spec.get("unschedulable"):
        return False
    if any(labels.get(k) != v for k, v in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    tolerations = pod_spec.get("tolerations") or []
    return all(tolerates(tolerations, taint) for taint in spec.get("taints") or [])


def role_capacity(
    pod_spec: Mapping[str, Any],
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    scheduled: int,
) -> int | None:
    """Most pods of this role that can run: the ``scheduled`` ones plus those that fit in free GPUs.

    ``pods`` are all non-terminated pods of the cluster (any namespace); their GPU requests are
    subtracted from their node's allocatable GPUs.
    """
    need = gpu_request(pod_spec)
    if need <= 0:
        return None
    used: dict[str, int] = {}
    for pod in pods:
        spec = pod.get("spec") or {}
        phase = (pod.get("status") or {}).get("phase")
        node = spec.get("nodeName")
        if node and phase not in ("Succeeded", "Failed"):
            used[node] = used.get(node, 0) + gpu_request(spec)
    free_slots = 0
    for node in nodes:
        if not node_fits(node, pod_spec):
            continue
        name = (node.get("metadata") or {}).get("name", "")
        allocatable = parse_quantity(((node.get("status") or {}).get("allocatable") or {}).get(GPU, 0))
        free_slots += max(0, allocatable - used.get(name, 0)) // need
    return scheduled + free_slots


def scheduling(pods: Iterable[Mapping[str, Any]]) -> Scheduling:
    """Count a role's pods that are placed and those the scheduler marked Unschedulable."""
    scheduled = unschedulable = 0
    messages: list[str] = []
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if (pod.get("spec") or {}).get("nodeName"):
            scheduled += 1
            continue
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                if cond.get("reason") == "Unschedulable":
                    unschedulable += 1
                    if cond.get("message"):
                        messages.append(str(cond["message"]))
    return Scheduling(scheduled, unschedulable, tuple(messages[:1]))
