"""Node pools of the sandbox: parse the YAML, build the kwok Node manifests (pure functions)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from baton_operator.names import NODE_POOL_LABEL

DEFAULT_NODEPOOLS = Path(__file__).with_name("nodepools.yaml")
POOL_LABEL = NODE_POOL_LABEL
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"
RDMA_RESOURCE = "rdma/ib"
# Node names are DNS labels; keep pool names a strict subset so `<name>-<i>` always is one.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$")


class NodePoolError(ValueError):
    """The node pool file is invalid; the message names the offending field."""


@dataclass(frozen=True)
class GpuSpec:
    product: str
    count: int
    memory_mib: int


@dataclass(frozen=True)
class NodePool:
    name: str
    count: int
    cpu: str
    memory: str
    pods: int = 110
    gpu: GpuSpec | None = None
    rdma: int = 0


def _int(value: Any, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise NodePoolError(f"{field}: expected an integer >= {minimum}, got {value!r}")
    return value


def _str(value: Any, field: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise NodePoolError(f"{field}: expected a non-empty string, got {value!r}")
    return value


def parse_pools(doc: Any) -> list[NodePool]:
    """Validate a parsed node pool document; raises NodePoolError naming the bad field."""
    if not isinstance(doc, dict) or not isinstance(doc.get("pools"), list) or not doc["pools"]:
        raise NodePoolError("pools: expected a non-empty list of node pools")
    pools: list[NodePool] = []
    seen: set[str] = set()
    for i, raw in enumerate(doc["pools"]):
        where = f"pools[{i}]"
        if not isinstance(raw, dict):
            raise NodePoolError(f"{where}: expected a mapping, got {raw!r}")
        unknown = set(raw) - {"name", "count", "gpu", "rdma", "cpu", "memory", "pods"}
        if unknown:
            raise NodePoolError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        name = _str(raw.get("name"), f"{where}.name")
        if not _NAME.match(name):
            raise NodePoolError(f"{where}.name: {name!r} is not a lowercase DNS label of <= 42 characters")
        if name in seen:
            raise NodePoolError(f"{where}.name: duplicate pool name {name!r}")
        seen.add(name)
        gpu = None
        if raw.get("gpu") is not None:
            g = raw["gpu"]
            if not isinstance(g, dict):
                raise NodePoolError(f"{where}.gpu: expected a mapping, got {g!r}")
            gpu = GpuSpec(
                product=_str(g.get("product"), f"{where}.gpu.product"),
                count=_int(g.get("count"), f"{where}.gpu.count", 1),
                memory_mib=_int(g.get("memoryMiB"), f"{where}.gpu.memoryMiB", 1),
            )
        pools.append(
            NodePool(
                name=name,
                count=_int(raw.get("count"), f"{where}.count", 0),
                cpu=_str(raw.get("cpu", "16"), f"{where}.cpu"),
                memory=_str(raw.get("memory", "64Gi"), f"{where}.memory"),
                pods=_int(raw.get("pods", 110), f"{where}.pods", 1),
                gpu=gpu,
                rdma=_int(raw.get("rdma", 0), f"{where}.rdma", 0),
            )
        )
    return pools


def load_pools(path: Path = DEFAULT_NODEPOOLS) -> list[NodePool]:
    """Read and validate a node pool YAML file."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise NodePoolError(f"node pools file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise NodePoolError(f"node pools file {path}: invalid YAML: {exc}") from None
    try:
        return parse_pools(doc)
    except NodePoolError as exc:
        raise NodePoolError(f"node pools file {path}: {exc}") from None


def node_manifest(pool: NodePool, index: int) -> dict[str, Any]:
    """The Node object of node ``index`` of ``pool``, as kwok expects to manage it."""
    name = f"{pool.name}-{index}"
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        POOL_LABEL: pool.name,
    }
    resources: dict[str, str] = {"cpu": pool.cpu, "memory": pool.memory, "pods": str(pool.pods)}
    taints: list[dict[str, str]] = []
    if pool.gpu is not None:
        labels.update(
            {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": pool.gpu.product,
                "nvidia.com/gpu.count": str(pool.gpu.count),
                "nvidia.com/gpu.memory": str(pool.gpu.memory_mib),
            }
        )
        resources[GPU_RESOURCE] = str(pool.gpu.count)
        taints.append({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"})
    if pool.rdma:
        resources[RDMA_RESOURCE] = str(pool.rdma)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE,
                "node.alpha.kubernetes.io/ttl": "0",
            },
        },
        "spec": {"taints": taints},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            # nodeInfo, conditions and addresses are filled in by kwok's node-initialize stage.
        },
    }


def node_manifests(pools: list[NodePool]) -> list[dict[str, Any]]:
    """Every Node of every pool, in pool order."""
    return [node_manifest(p, i) for p in pools for i in range(p.count)]
