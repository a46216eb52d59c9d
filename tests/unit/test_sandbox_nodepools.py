"""Node pool parsing and the kwok Node manifests built from it."""

from __future__ import annotations

import pytest
from baton_dev.sandbox.nodepools import (
    GPU_RESOURCE,
    KWOK_ANNOTATION,
    POOL_LABEL,
    RDMA_RESOURCE,
    NodePoolError,
    load_pools,
    node_manifests,
    parse_pools,
)


def test_default_pools_have_two_h100_four_a100_and_a_system_node() -> None:
    nodes = node_manifests(load_pools())
    by_pool: dict[str, list[dict]] = {}
    for n in nodes:
        by_pool.setdefault(n["metadata"]["labels"][POOL_LABEL], []).append(n)
    assert {k: len(v) for k, v in by_pool.items()} == {"h100": 2, "a100": 4, "system": 1}
    h100 = by_pool["h100"][0]
    labels = h100["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert by_pool["a100"][0]["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    for n in by_pool["h100"] + by_pool["a100"]:
        assert n["status"]["capacity"][GPU_RESOURCE] == "8"
        assert n["status"]["allocatable"][GPU_RESOURCE] == "8"
        assert n["status"]["allocatable"][RDMA_RESOURCE] == "8"
        assert n["spec"]["taints"] == [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]
        assert n["metadata"]["annotations"][KWOK_ANNOTATION] == "fake"
    system = by_pool["system"][0]
    assert system["spec"]["taints"] == []
    assert GPU_RESOURCE not in system["status"]["allocatable"]
    assert "nvidia.com/gpu.product" not in system["metadata"]["labels"]
    assert len({n["metadata"]["name"] for n in nodes}) == len(nodes)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({}, "pools"),
        ({"pools": []}, "pools"),
        ({"pools": [{"name": "H100", "count": 1}]}, "pools[0].name"),
        ({"pools": [{"name": "a", "count": -1}]}, "pools[0].count"),
        ({"pools": [{"name": "a", "count": "2"}]}, "pools[0].count"),
        ({"pools": [{"name": "a", "count": 1}, {"name": "a", "count": 1}]}, "pools[1].name"),
        (
            {"pools": [{"name": "a", "count": 1, "gpu": {"product": "X", "count": 0, "memoryMiB": 1}}]},
            "pools[0].gpu.count",
        ),
        ({"pools": [{"name": "a", "count": 1, "gpu": {"count": 8, "memoryMiB": 1}}]}, "pools[0].gpu.product"),
        ({"pools": [{"name": "a", "count": 1, "gpus": 8}]}, "pools[0]: unknown field(s) gpus"),
        ({"pools": [{"name": "a", "count": 1, "rdma": True}]}, "pools[0].rdma"),
    ],
)
def test_invalid_pools_name_the_field(doc: dict, field: str) -> None:
    with pytest.raises(
        NodePoolError,
        match=field.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)"),
    ):
        parse_pools(doc)


def test_load_pools_reports_file_and_bad_yaml(tmp_path) -> None:
    bad = tmp_path / "pools.yaml"
    bad.write_text("pools: [\n")
    with pytest.raises(NodePoolError, match="invalid YAML"):
        load_pools(bad)
    with pytest.raises(NodePoolError, match="missing.yaml"):
        load_pools(tmp_path / "missing.yaml")


def test_pool_without_rdma_has_no_rdma_resource() -> None:
    pools = parse_pools(
        {
            "pools": [
                {"name": "l4", "count": 1, "gpu": {"product": "NVIDIA-L4", "count": 1, "memoryMiB": 23034}}
            ]
        }
    )
    (node,) = node_manifests(pools)
    assert node["metadata"]["name"] == "l4-0"
    assert RDMA_RESOURCE not in node["status"]["capacity"]
    assert node["status"]["capacity"][GPU_RESOURCE] == "1"
