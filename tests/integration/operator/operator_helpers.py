"""Helpers shared by the operator's sandbox tests: pool manifests and observations via kubectl."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from baton_dev.bench.operator_pools import scrape_metric
from baton_dev.sandbox.handle import Sandbox
from polling import wait_until

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "inferencepool.yaml"
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
READY_TIMEOUT_S = 60.0
RESYNC_SECONDS = 5  # the test operator's --resync-seconds


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the Prometheus samples ``name`` at ``url`` whose labels include ``labels`` (0 when absent)."""
    return scrape_metric(url, name, **labels)


def tiny_pool(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A small pool: builtin model, 1 prefill (H100), 1 decode (A100), 1 router; ``spec`` overrides."""
    body: dict[str, Any] = {
        "apiVersion": "baton.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": "tiny", "source": "builtin://tiny", "dtype": "float32"},
            "prefill": {"replicas": 1, "tensorParallelSize": 1},
            "decode": {"replicas": 1, "maxBatchSize": 8},
            "router": {"replicas": 1},
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


def example_pool(namespace: str) -> dict[str, Any]:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"]["namespace"] = namespace
    return body


def apply(sandbox: Sandbox, body: dict[str, Any], check: bool = True) -> Any:
    """`kubectl apply` (client-side, strict validation) as a user would; returns the CompletedProcess."""
    return sandbox.kubectl("apply", "--validate=strict", "-f", "-", input=json.dumps(body), check=check)


def get(sandbox: Sandbox, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The object as JSON (with managedFields), None when it does not exist."""
    proc = sandbox.kubectl(
        "get", kind, name, "-n", namespace, "-o", "json", "--show-managed-fields", check=False
    )
    if proc.returncode != 0:
        if "NotFound" in proc.stderr:
            return None
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout)


def pool_status(sandbox: Sandbox, namespace: str, name: str) -> dict[str, Any]:
    return (get(sandbox, "inferencepool", namespace, name) or {}).get("status") or {}


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == ctype), {})


def is_ready(sandbox: Sandbox, namespace: str, name: str) -> bool:
    return condition(pool_status(sandbox, namespace, name), "Ready").get("status") == "True"


def pods(sandbox: Sandbox, namespace: str, selector: str) -> list[dict[str, Any]]:
    return sandbox.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]


def node_products(sandbox: Sandbox) -> dict[str, str]:
    nodes = sandbox.kubectl_json("get", "nodes")["items"]
    return {n["metadata"]["name"]: n["metadata"]["labels"].get("nvidia.com/gpu.product", "") for n in nodes}


def children(sandbox: Sandbox, namespace: str, pool: str) -> dict[str, list[str]]:
    """kind -> names of objects labelled as this pool's children."""
    kinds = (
        "statefulsets,deployments,services,configmaps,poddisruptionbudgets,serviceaccounts,roles,rolebindings,"
        "networkpolicies"
    )
    items = sandbox.kubectl_json("get", kinds, "-n", namespace, "-l", f"baton.dev/pool={pool}")["items"]
    found: dict[str, list[str]] = {}
    for item in items:
        found.setdefault(item["kind"], []).append(item["metadata"]["name"])
    return {k: sorted(v) for k, v in found.items()}


def delete_pool_and_pods(sandbox: Sandbox, namespace: str, name: str, timeout: float = 60.0) -> None:
    """Delete a pool and wait until its pods are gone, so their GPUs are free for the next test."""
    sandbox.kubectl("delete", "inferencepool", name, "-n", namespace, "--ignore-not-found", "--wait=false")
    wait_until(
        lambda: pods(sandbox, namespace, f"baton.dev/pool={name}") == [],
        timeout=timeout,
        what=f"pods of {name} gone",
        interval=0.25,
    )
