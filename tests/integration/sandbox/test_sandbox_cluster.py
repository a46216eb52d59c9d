"""The sandbox is a real cluster: version, GPU node pools, scheduling, garbage collection, RBAC."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from baton_dev.sandbox.handle import KubectlError, Sandbox
from baton_dev.sandbox.nodepools import POOL_LABEL
from polling import wait_until

pytestmark = pytest.mark.sandbox

H100 = "NVIDIA-H100-80GB-HBM3"
GPU = "nvidia.com/gpu"


@pytest.fixture
def namespace(sandbox_cluster: Sandbox) -> Iterator[str]:
    name = f"sbx-{uuid.uuid4().hex[:8]}"
    sandbox_cluster.kubectl("create", "namespace", name)
    # Pods are rejected until the namespace's default ServiceAccount exists.
    wait_until(
        lambda: sandbox_cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        timeout=30,
        what=f"default ServiceAccount in {name}",
        interval=0.1,
    )
    yield name
    sandbox_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _pods(sb: Sandbox, ns: str, selector: str) -> list[dict[str, Any]]:
    return sb.kubectl_json("get", "pods", "-n", ns, "-l", selector)["items"]


def _ready(pod: dict[str, Any]) -> bool:
    conds = pod.get("status", {}).get("conditions", [])
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conds
    )


def _gpu_deployment(name: str, replicas: int, gpus: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": H100},
                    "tolerations": [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "worker",
                            "image": "registry.invalid/baton-worker:test",
                            "resources": {"limits": {GPU: str(gpus)}, "requests": {GPU: str(gpus)}},
                        }
                    ],
                },
            },
        },
    }


def _free_h100_gpus(sb: Sandbox) -> int:
    nodes = sb.kubectl_json("get", "nodes", "-l", f"nvidia.com/gpu.product={H100}")["items"]
    total = sum(int(n["status"]["allocatable"][GPU]) for n in nodes)
    names = {n["metadata"]["name"] for n in nodes}
    pods = sb.kubectl_json("get", "pods", "-A")["items"]
    used = 0
    for p in pods:
        if p["spec"].get("nodeName") in names and p["status"].get("phase") not in ("Succeeded", "Failed"):
            for c in p["spec"]["containers"]:
                used += int(c.get("resources", {}).get("requests", {}).get(GPU, 0))
    return total - used


def test_server_is_at_least_1_34_and_pools_carry_gpu_labels_taints_and_capacity(
    sandbox_cluster: Sandbox,
) -> None:
    version = json.loads(sandbox_cluster.kubectl("version", "-o", "json").stdout)
    server = version["serverVersion"]
    assert (int(server["major"]), int(server["minor"].rstrip("+"))) >= (1, 34), server
    nodes = sandbox_cluster.kubectl_json("get", "nodes")["items"]
    pools: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        pools.setdefault(n["metadata"]["labels"].get(POOL_LABEL, ""), []).append(n)
    assert len(pools["h100"]) >= 2 and len(pools["a100"]) >= 4 and pools["system"]
    for pool, product in (("h100", H100), ("a100", "NVIDIA-A100-SXM4-80GB")):
        for n in pools[pool]:
            labels = n["metadata"]["labels"]
            assert labels["nvidia.com/gpu.product"] == product
            assert labels["nvidia.com/gpu.count"] == "8" and int(labels["nvidia.com/gpu.memory"]) > 80000
            assert n["status"]["allocatable"][GPU] == "8" and n["status"]["capacity"][GPU] == "8"
            assert n["status"]["allocatable"]["rdma/ib"] == "8"
            assert {"key": GPU, "value": "present", "effect": "NoSchedule"} in n["spec"]["taints"]
            assert any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])


def test_h100_pods_land_on_h100_nodes_and_one_gpu_too_many_stays_pending(
    sandbox_cluster: Sandbox, namespace: str
) -> None:
    sb = sandbox_cluster
    h100_nodes = sb.kubectl_json("get", "nodes", "-l", f"nvidia.com/gpu.product={H100}")["items"]
    total = sum(int(n["status"]["allocatable"][GPU]) for n in h100_nodes)
    free = _free_h100_gpus(sb)
    assert free >= 4, f"only {free} free H100 GPUs in the sandbox; another test leaked GPU pods"
    # One 4-GPU pod more than the whole H100 pool holds: at least one must stay Pending.
    replicas = total // 4 + 1
    sb.apply(
        [
            {
                **_gpu_deployment("h100-tp4", replicas, 4),
                "metadata": {"name": "h100-tp4", "namespace": namespace},
            }
        ]
    )

    def pending_reason() -> str | None:
        for p in _pods(sb, namespace, "app=h100-tp4"):
            for c in p["status"].get("conditions", []):
                if (
                    c["type"] == "PodScheduled"
                    and c["status"] == "False"
                    and "Insufficient" in c.get("message", "")
                ):
                    return f"{c.get('reason')}: {c.get('message')}"
        return None

    # GPUs held by other tests' pods can only be freed meanwhile (tests run one at a time).
    wait_until(
        lambda: len([p for p in _pods(sb, namespace, "app=h100-tp4") if _ready(p)]) >= free // 4,
        timeout=60,
        what=f">= {free // 4} Ready H100 pods",
        interval=0.3,
    )
    reason = wait_until(pending_reason, timeout=60, what="an unschedulable H100 pod", interval=0.3)
    assert reason.startswith("Unschedulable"), reason
    assert f"Insufficient {GPU}" in reason, reason
    pods = _pods(sb, namespace, "app=h100-tp4")
    names = {n["metadata"]["name"] for n in h100_nodes}
    placed = {p["spec"]["nodeName"] for p in pods if p["spec"].get("nodeName")}
    assert placed <= names, f"pods landed on {placed - names}, outside the H100 pool"
    assert len([p for p in pods if _ready(p)]) <= total // 4
    assert len([p for p in pods if not p["spec"].get("nodeName")]) >= 1


def test_deleting_an_owner_garbage_collects_its_dependents(sandbox_cluster: Sandbox, namespace: str) -> None:
    sb = sandbox_cluster
    # A Deployment without GPU or toleration: it must land on the untainted system pool.
    sb.kubectl(
        "create",
        "deployment",
        "router",
        "--image=registry.invalid/router:test",
        "--replicas=2",
        "-n",
        namespace,
    )
    wait_until(
        lambda: len([p for p in _pods(sb, namespace, "app=router") if _ready(p)]) == 2,
        timeout=60,
        what="2 Ready router pods",
        interval=0.3,
    )
    nodes = {p["spec"]["nodeName"] for p in _pods(sb, namespace, "app=router")}
    assert all(n.startswith("system-") for n in nodes), nodes
    assert sb.kubectl_json("get", "replicasets", "-n", namespace, "-l", "app=router")["items"]
    # An owner reference set by hand, as the operator does for its children.
    owner = sb.kubectl_json("create", "configmap", "owner", "-n", namespace)
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
            ],
        },
    }
    sb.apply([dependent])
    sb.kubectl("delete", "deployment", "router", "-n", namespace)
    sb.kubectl("delete", "configmap", "owner", "-n", namespace)

    def collected() -> bool:
        rs = sb.kubectl_json("get", "replicasets", "-n", namespace, "-l", "app=router")["items"]
        pods = _pods(sb, namespace, "app=router")
        cm = sb.kubectl("get", "configmap", "dependent", "-n", namespace, check=False)
        return not rs and not pods and cm.returncode != 0 and "NotFound" in cm.stderr

    wait_until(
        collected,
        timeout=60,
        what="garbage collection of the ReplicaSet, pods and dependent ConfigMap",
        interval=0.3,
    )


def test_rbac_denies_what_a_role_does_not_grant(sandbox_cluster: Sandbox, namespace: str) -> None:
    sb = sandbox_cluster
    sb.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    kc = sb.kubeconfig_for_service_account(namespace, "nobody")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:1"}]},
    }
    with pytest.raises(KubectlError, match="Forbidden|forbidden") as denied:
        sb.kubectl("create", "-f", "-", input=json.dumps(pod), kubeconfig=kc)
    assert f"system:serviceaccount:{namespace}:nobody" in str(denied.value)
    # Grant reading pods only: reads now work, creating is still denied.
    sb.kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    sb.kubectl(
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:nobody",
        "-n",
        namespace,
    )
    wait_until(
        lambda: sb.kubectl("get", "pods", "-n", namespace, kubeconfig=kc, check=False).returncode == 0,
        timeout=30,
        what="the RoleBinding to take effect",
        interval=0.1,
    )
    with pytest.raises(KubectlError, match="Forbidden|forbidden"):
        sb.kubectl("create", "-f", "-", input=json.dumps(pod), kubeconfig=kc)
    assert (
        sb.kubectl(
            "auth", "can-i", "create", "pods", "-n", namespace, kubeconfig=kc, check=False
        ).stdout.strip()
        == "no"
    )
    assert (
        sb.kubectl(
            "auth", "can-i", "list", "pods", "-n", namespace, kubeconfig=kc, check=False
        ).stdout.strip()
        == "yes"
    )
    # Anonymous requests get nothing beyond the public health endpoints.
    anon = sb.kubectl(
        "get",
        "pods",
        "-n",
        namespace,
        "--kubeconfig=/dev/null",
        f"--server={sb.server}",
        f"--certificate-authority={sb.ca_file}",
        check=False,
    )
    assert anon.returncode != 0
