"""The operator on the sandbox: create -> Ready, update rolls out, drift restored, delete cleans up."""

from __future__ import annotations

import json

import pytest
from baton_operator.runtime import Options
from operator_helpers import (
    A100,
    H100,
    READY_TIMEOUT_S,
    apply,
    children,
    condition,
    delete_pool_and_pods,
    example_pool,
    get,
    is_ready,
    node_products,
    pods,
    pool_status,
    tiny_pool,
)
from polling import wait_until

pytestmark = pytest.mark.sandbox

LABELS = {
    "app.kubernetes.io/name": "baton",
    "app.kubernetes.io/managed-by": "baton-operator",
}
EXPECTED_CHILDREN = {
    "ConfigMap": ["p-config"],
    "Deployment": ["p-decode", "p-router"],
    "NetworkPolicy": ["p-decode", "p-prefill", "p-router"],
    "PodDisruptionBudget": ["p-decode", "p-prefill", "p-router"],
    "Role": ["p-router"],
    "RoleBinding": ["p-router"],
    "Service": ["p-decode", "p-prefill", "p-router"],
    "ServiceAccount": ["p-router"],
    "StatefulSet": ["p-prefill"],
}


def test_operator_create_becomes_ready_with_labelled_owned_children(sandbox, operator_process, namespace):
    apply(sandbox, tiny_pool("p", namespace))
    wait_until(
        lambda: is_ready(sandbox, namespace, "p"), timeout=READY_TIMEOUT_S, what="pool p Ready", interval=0.25
    )
    assert children(sandbox, namespace, "p") == EXPECTED_CHILDREN
    pool = get(sandbox, "inferencepool", namespace, "p")
    status = pool["status"]
    assert status["observedGeneration"] == pool["metadata"]["generation"]
    assert status["prefill"]["summary"] == "1/1" and status["decode"]["summary"] == "1/1"
    assert status["endpoint"] == f"http://p-router.{namespace}.svc:8000"
    assert condition(status, "Progressing")["status"] == "False"
    assert condition(status, "Degraded")["status"] == "False"
    for kind, names in EXPECTED_CHILDREN.items():
        for name in names:
            obj = get(sandbox, kind.lower(), namespace, name)
            for key, value in {**LABELS, "app.kubernetes.io/instance": "p", "baton.dev/pool": "p"}.items():
                assert obj["metadata"]["labels"][key] == value, (kind, name, key)
            (owner,) = obj["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["name"], owner["uid"]) == (
                "InferencePool",
                "p",
                pool["metadata"]["uid"],
            )
            managers = {m["manager"] for m in obj["metadata"]["managedFields"] if m["operation"] == "Apply"}
            assert "baton-operator" in managers, (kind, name)
    roles = {p["metadata"]["labels"]["baton.dev/role"] for p in pods(sandbox, namespace, "baton.dev/pool=p")}
    assert roles == {"prefill", "decode", "router"}
    events = sandbox.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=p"
    )
    assert {"Created", "Ready"} <= {e["reason"] for e in events["items"]}


def test_operator_example_pool_lands_on_the_right_gpu_nodes(sandbox, operator_process, namespace):
    body = example_pool(namespace)
    name = body["metadata"]["name"]
    apply(sandbox, body)
    try:
        wait_until(
            lambda: is_ready(sandbox, namespace, name),
            timeout=READY_TIMEOUT_S,
            what=f"example pool {name} Ready",
            interval=0.25,
        )
        check_example_placement(sandbox, namespace, name)
    finally:
        delete_pool_and_pods(sandbox, namespace, name)  # it fills both H100 nodes


def check_example_placement(sandbox, namespace, name):
    products = node_products(sandbox)
    prefill = pods(sandbox, namespace, f"baton.dev/pool={name},baton.dev/role=prefill")
    decode = pods(sandbox, namespace, f"baton.dev/pool={name},baton.dev/role=decode")
    assert len(prefill) == 2 and len(decode) == 2
    for pod, product, gpus in [*((p, H100, "8") for p in prefill), *((d, A100, "1") for d in decode)]:
        assert products[pod["spec"]["nodeName"]] == product, pod["metadata"]["name"]
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == gpus and limits["rdma/ib"] == "1"
        assert pod["spec"]["containers"][0]["command"][:4] == [
            "baton",
            "worker",
            "--role",
            pod["metadata"]["labels"]["baton.dev/role"],
        ]
    # TP 8 fills a node: the two prefill pods are on different H100 nodes
    assert len({p["spec"]["nodeName"] for p in prefill}) == 2
    (router,) = pods(sandbox, namespace, f"baton.dev/pool={name},baton.dev/role=router")
    assert products[router["spec"]["nodeName"]] == ""  # the router needs no GPU


def test_operator_spec_update_rolls_out(sandbox, operator_process, namespace):
    apply(sandbox, tiny_pool("p", namespace))
    wait_until(
        lambda: is_ready(sandbox, namespace, "p"), timeout=READY_TIMEOUT_S, what="pool p Ready", interval=0.25
    )
    ucx = {"UCX_LOG_LEVEL": "warn"}
    apply(
        sandbox,
        tiny_pool("p", namespace, decode={"replicas": 2, "maxBatchSize": 32}, kvTransfer={"ucx": ucx}),
    )

    def env(kind: str, name: str) -> dict[str, str]:
        obj = get(sandbox, kind, namespace, name)
        return {e["name"]: e.get("value") for e in obj["spec"]["template"]["spec"]["containers"][0]["env"]}

    def rolled_out():
        deploy = get(sandbox, "deployment", namespace, "p-decode")
        cmd = deploy["spec"]["template"]["spec"]["containers"][0]["command"]
        return deploy["spec"]["replicas"] == 2 and cmd[cmd.index("--max-batch-size") + 1] == "32"

    wait_until(
        rolled_out, timeout=30, what="decode Deployment updated to 2 replicas, batch 32", interval=0.25
    )
    # spec.kvTransfer.ucx reaches both worker roles' environment, and not the router's.
    wait_until(
        lambda: env("statefulset", "p-prefill").get("UCX_LOG_LEVEL") == "warn",
        timeout=30,
        what="prefill UCX env",
        interval=0.25,
    )
    assert env("deployment", "p-decode")["UCX_LOG_LEVEL"] == "warn"
    assert "UCX_LOG_LEVEL" not in env("deployment", "p-router")
    pool = get(sandbox, "inferencepool", namespace, "p")

    def converged():
        st = pool_status(sandbox, namespace, "p")
        return (
            st.get("observedGeneration") == pool["metadata"]["generation"]
            and st["decode"]["summary"] == "2/2"
            and is_ready(sandbox, namespace, "p")
        )

    wait_until(
        converged,
        timeout=READY_TIMEOUT_S,
        what="status 2/2 decode Ready at the new generation",
        interval=0.25,
    )
    decode_pods = pods(sandbox, namespace, "baton.dev/pool=p,baton.dev/role=decode")
    live = [p for p in decode_pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 2
    for p in live:
        cmd = p["spec"]["containers"][0]["command"]
        assert cmd[cmd.index("--max-batch-size") + 1] == "32"


def test_operator_restores_deleted_and_edited_children(sandbox, operator_process, namespace):
    apply(sandbox, tiny_pool("p", namespace))
    wait_until(
        lambda: is_ready(sandbox, namespace, "p"), timeout=READY_TIMEOUT_S, what="pool p Ready", interval=0.25
    )
    old_uid = get(sandbox, "service", namespace, "p-router")["metadata"]["uid"]
    sandbox.kubectl("delete", "service", "p-router", "-n", namespace)
    wait_until(
        lambda: (
            (get(sandbox, "service", namespace, "p-router") or {}).get("metadata", {}).get("uid")
            not in (None, old_uid)
        ),
        timeout=20,
        what="router Service re-created",
        interval=0.25,
    )
    sandbox.kubectl("delete", "configmap", "p-config", "-n", namespace)
    wait_until(
        lambda: get(sandbox, "configmap", namespace, "p-config"),
        timeout=20,
        what="ConfigMap re-created",
        interval=0.25,
    )
    # An edit by another field manager: replicas and the image
    sandbox.kubectl("scale", "deployment", "p-decode", "-n", namespace, "--replicas=3")
    sandbox.kubectl("set", "image", "statefulset/p-prefill", "worker=evil:latest", "-n", namespace)

    def restored():
        decode = get(sandbox, "deployment", namespace, "p-decode")
        prefill = get(sandbox, "statefulset", namespace, "p-prefill")
        image = prefill["spec"]["template"]["spec"]["containers"][0]["image"]
        return decode["spec"]["replicas"] == 1 and image == Options.default_image

    wait_until(restored, timeout=20, what="decode replicas and prefill image restored", interval=0.25)
    wait_until(
        lambda: is_ready(sandbox, namespace, "p"),
        timeout=READY_TIMEOUT_S,
        what="pool p Ready again",
        interval=0.25,
    )


def test_operator_delete_removes_every_child(sandbox, operator_process, namespace):
    apply(sandbox, tiny_pool("p", namespace))
    wait_until(
        lambda: is_ready(sandbox, namespace, "p"), timeout=READY_TIMEOUT_S, what="pool p Ready", interval=0.25
    )
    sandbox.kubectl("delete", "inferencepool", "p", "-n", namespace, "--wait=true", "--timeout=30s")
    wait_until(
        lambda: children(sandbox, namespace, "p") == {},
        timeout=45,
        what="children garbage-collected",
        interval=0.25,
    )
    wait_until(
        lambda: pods(sandbox, namespace, "baton.dev/pool=p") == [],
        timeout=45,
        what="pods gone",
        interval=0.25,
    )


def test_operator_status_write_is_a_merge_that_keeps_autoscaler_fields(sandbox, operator_process, namespace):
    body = tiny_pool(
        "p",
        namespace,
        decode={"replicas": 1, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3}},
    )
    apply(sandbox, body)
    wait_until(
        lambda: get(sandbox, "deployment", namespace, "p-decode"),
        timeout=30,
        what="decode Deployment",
        interval=0.25,
    )
    deploy = get(sandbox, "deployment", namespace, "p-decode")
    owners = {m["manager"]: json.dumps(m.get("fieldsV1", {})) for m in deploy["metadata"]["managedFields"]}
    assert '"f:replicas"' not in owners["baton-operator"]  # the autoscaler owns replicas
    patch = {"status": {"decode": {"queueDepth": 7, "lastScaleReason": "test"}}}
    sandbox.kubectl(
        "patch",
        "inferencepool",
        "p",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(patch),
    )
    wait_until(
        lambda: is_ready(sandbox, namespace, "p"), timeout=READY_TIMEOUT_S, what="pool p Ready", interval=0.25
    )
    st = pool_status(sandbox, namespace, "p")
    assert st["decode"]["queueDepth"] == 7 and st["decode"]["lastScaleReason"] == "test"
    assert condition(st, "ScalingActive")["status"] in ("True", "False")
