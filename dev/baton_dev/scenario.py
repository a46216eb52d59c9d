"""Pieces shared by `baton bench autoscale` and the sandbox tests: an autoscaled pool, its replicas.

``autoscaled_pool`` is pure (a manifest); :class:`Replicas` reads a role's replicas quickly through
the Kubernetes client (kubectl is too slow to time a reaction in tens of milliseconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from baton_operator.names import TEST_NODE_LABEL, inference_pool, workload_name


@dataclass(frozen=True)
class RoleKnobs:
    min_replicas: int = 1
    max_replicas: int = 4
    target_queue_depth: float = 4
    tensor_parallel_size: int = 1
    gpu: str = "H100"
    scale_down_s: float = 300
    max_scale_step: int = 4
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[tuple[str, str], ...] = ()  # (key, value) tolerated with effect NoSchedule


PRIVATE_LABEL = TEST_NODE_LABEL
GPU_PRODUCTS = {"H100": ("NVIDIA-H100-80GB-HBM3", 81559), "A100": ("NVIDIA-A100-SXM4-80GB", 81920)}


def private_gpu_node(tag: str, gpu: str, gpus: int = 8) -> dict[str, Any]:
    """A kwok Node of GPU type ``gpu`` that only pods selecting and tolerating ``tag`` use.

    The bench and the tests pin their pools to such nodes, so the GPUs they scale into are known
    whatever else shares the sandbox (a full cluster would rightly stop the autoscaler).
    """
    from baton_dev.sandbox.nodepools import GpuSpec, NodePool, node_manifest

    product, memory = GPU_PRODUCTS[gpu]
    pool = NodePool(
        name=f"as{tag}{gpu.lower()}", count=1, cpu="64", memory="512Gi", gpu=GpuSpec(product, gpus, memory)
    )
    node = node_manifest(pool, 0)
    node["metadata"]["labels"][PRIVATE_LABEL] = tag
    node["spec"]["taints"].append({"key": PRIVATE_LABEL, "value": tag, "effect": "NoSchedule"})
    return node


def pinned(knobs: RoleKnobs, tag: str) -> RoleKnobs:
    """``knobs`` restricted to the private nodes of ``tag``."""
    return replace(knobs, node_selector=((PRIVATE_LABEL, tag),), tolerations=((PRIVATE_LABEL, tag),))


def autoscaled_pool(
    name: str,
    namespace: str,
    metrics_url: str,
    interval_s: float,
    prefill: RoleKnobs,
    decode: RoleKnobs,
) -> dict[str, Any]:
    """An InferencePool (builtin://tiny) with both roles autoscaled on ``metrics_url``."""

    def role(k: RoleKnobs) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if k.node_selector:
            extra["nodeSelector"] = dict(k.node_selector)
        if k.tolerations:
            extra["tolerations"] = [
                {"key": key, "operator": "Equal", "value": value, "effect": "NoSchedule"}
                for key, value in k.tolerations
            ]
        return {
            **extra,
            "replicas": k.min_replicas,
            "tensorParallelSize": k.tensor_parallel_size,
            "gpu": {"type": k.gpu},
            "autoscaling": {
                "enabled": True,
                "minReplicas": k.min_replicas,
                "maxReplicas": k.max_replicas,
                "targetQueueDepth": k.target_queue_depth,
                "scaleUpStabilizationSeconds": 0,
                "scaleDownStabilizationSeconds": int(k.scale_down_s),
                "maxScaleStep": k.max_scale_step,
            },
        }

    spec = {
        "model": {"name": "tiny", "source": "builtin://tiny"},
        "prefill": role(prefill),
        "decode": role(decode),
        "router": {"replicas": 1},
        "autoscaling": {"metricsUrl": metrics_url, "intervalSeconds": int(interval_s)},
    }
    return inference_pool(name, namespace, spec)


class Replicas:
    """spec.replicas of a pool's role workloads, read with the operator's API client."""

    def __init__(self, kubeconfig: Path, namespace: str, pool: str) -> None:
        from baton_operator.api import KubeApi

        self._api = KubeApi.from_environment(str(kubeconfig))
        self.namespace, self.pool = namespace, pool

    def get(self, role: str) -> int | None:
        """The role's spec.replicas, or None while its workload does not exist."""
        from baton_operator.api import WORKLOADS

        obj = self._api.get(WORKLOADS[role], self.namespace, workload_name(self.pool, role), timeout=5)
        if obj is None:
            return None
        return int((obj.get("spec") or {}).get("replicas") or 0)

    def close(self) -> None:
        self._api.close()


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.05) -> float:
    """Poll ``check`` until true; return the time it became true, or raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(poll_s)
