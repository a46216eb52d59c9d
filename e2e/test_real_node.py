"""An InferencePool served end to end by real pods: helm install, kubectl apply, tokens back.

Runs on the real-node sandbox (e2e/conftest.py): the chart's operator runs as a pod under its
ServiceAccount; examples/inferencepool-cpu.yaml becomes a prefill StatefulSet, a decode
Deployment and a router whose pods run on the real node from the local images; requests go
through the router Service's ClusterIP with the official openai client. The tests share one
pool and run in file order (the last one deletes it).
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import (
    answers,
    condition,
    http_get,
    local_stack,
    metric,
    pods,
    ready,
    ready_pods,
)
from polling import wait_until

pytestmark = [pytest.mark.real_node, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "inferencepool-cpu.yaml"
POOL = "tiny-cpu"
MODEL = "tiny"
START_S = 240  # pods pull nothing, but a worker loads torch and the model on two shared cores


def ready_pool(sb: Any) -> dict[str, Any] | None:
    """The InferencePool when its Ready condition is True, else None."""
    obj = sb.kubectl_json("get", "inferencepool", POOL)
    return obj if condition(obj, "Ready") == "True" else None


def sel(role: str) -> str:
    return f"baton.dev/pool={POOL},baton.dev/role={role}"


@pytest.fixture(scope="module")
def operator_pod(real_sandbox: Any) -> dict[str, Any]:
    """`helm upgrade --install` of the chart with the operator Deployment on (the local image)."""
    from baton_dev.sandbox.operator_proc import (
        NAMESPACE,
        REAL_NODE_HELM_TIMEOUT_S,
        find_chart,
        in_cluster_operator_values,
        install_chart,
    )

    chart = find_chart()
    assert chart is not None
    install_chart(real_sandbox, chart, in_cluster_operator_values(), wait_s=REAL_NODE_HELM_TIMEOUT_S)
    found = wait_until(
        lambda: ready_pods(real_sandbox, "app.kubernetes.io/component=operator", 1, NAMESPACE),
        timeout=START_S,
        what="the operator pod to be Ready",
        interval=0.5,
    )
    return found[0]


@pytest.fixture(scope="module")
def pool(real_sandbox: Any, operator_pod: dict[str, Any]) -> dict[str, Any]:
    """The CPU example applied and Ready: its router Service's base URL and the pool object."""
    real_sandbox.kubectl("apply", "-f", str(EXAMPLE))
    for role in ("prefill", "decode", "router"):
        wait_until(
            lambda role=role: ready_pods(real_sandbox, sel(role), 1),
            timeout=START_S,
            what=f"the {role} pod Ready",
            interval=0.5,
        )
    obj = wait_until(
        lambda: ready_pool(real_sandbox), timeout=START_S, what=f"InferencePool {POOL} Ready", interval=0.5
    )
    ip = real_sandbox.kubectl_json("get", "service", f"{POOL}-router")["spec"]["clusterIP"]
    return {"url": f"http://{ip}:8000/v1", "object": obj}


def test_the_operator_runs_as_a_pod_under_its_service_account(
    real_sandbox: Any, operator_pod: dict[str, Any]
) -> None:
    from baton_dev.sandbox.operator_proc import NAMESPACE, SERVICE_ACCOUNT, running_operators

    spec, status = operator_pod["spec"], operator_pod["status"]
    assert spec["nodeName"] == "real-0"
    assert spec["serviceAccountName"] == SERVICE_ACCOUNT
    assert spec["containers"][0]["image"].startswith("baton-operator:")
    # No local `baton operator` process stands in for it.
    assert running_operators(real_sandbox) == []
    # Its liveness endpoint answers on the pod's address, as the kubelet's probe sees it.
    code, _ = http_get(f"http://{status['podIP']}:8080/healthz")
    assert code == 200
    fresh = real_sandbox.kubectl_json("get", "pod", "-n", NAMESPACE, operator_pod["metadata"]["name"])
    assert fresh["status"]["containerStatuses"][0]["restartCount"] == 0


def test_the_cpu_pool_lands_on_the_real_node_with_no_gpu(real_sandbox: Any, pool: dict[str, Any]) -> None:
    for role in ("prefill", "decode", "router"):
        (pod,) = pods(real_sandbox, sel(role))
        assert pod["spec"]["nodeName"] == "real-0", role
        container = pod["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {}), role
        if role != "router":
            cmd = container["command"]
            assert cmd[cmd.index("--device") + 1] == "cpu"
    status = pool["object"]["status"]
    assert status["prefill"]["readyReplicas"] == 1 and status["decode"]["readyReplicas"] == 1


def test_completions_and_streaming_chat_equal_baton_up(pool: dict[str, Any]) -> None:
    served = answers(pool["url"], MODEL)
    with local_stack() as url:
        local = answers(url, MODEL)
    assert served["completions"] == local["completions"]
    assert served["chat"] == local["chat"]
    assert served["chat_chunks"] > 1, "the chat answer was not streamed"
    assert all(served["completions"]), served


def test_the_next_turn_of_a_conversation_reuses_the_cached_prefix(pool: dict[str, Any]) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=pool["url"], api_key="unused", max_retries=0, timeout=120)
    router = pool["url"].removesuffix("/v1") + "/metrics"
    words = "prefill decode router cache block token stream batch handle worker".split()
    first = "System: " + " ".join(words[k % 7] for k in range(200)) + "\nUser: hello\nAssistant:"
    answer = client.completions.create(model=MODEL, prompt=first, max_tokens=8, temperature=0).choices[0].text
    # The router learns from the workers' Health what the first turn left in their caches.
    for role in ("prefill", "decode"):
        wait_until(
            lambda role=role: metric(http_get(router)[1], "baton_router_prefix_view_blocks", role=role) >= 8,
            timeout=30,
            what=f"the router's view of the {role} worker's prefix cache",
            interval=0.5,
        )
    before = http_get(router)[1]
    second = first + answer + "\nUser: and then?\nAssistant:"
    client.completions.create(model=MODEL, prompt=second, max_tokens=8, temperature=0)
    after = http_get(router)[1]
    for role in ("prefill", "decode"):
        hits = [
            metric(t, "baton_router_prefix_placement_total", role=role, reason="prefix_hit")
            for t in (before, after)
        ]
        assert hits[1] - hits[0] == 1, role
        cached = [metric(t, "baton_router_prefix_cached_tokens_total", role=role) for t in (before, after)]
        assert cached[1] - cached[0] >= 8 * 16, role  # at least the system prompt's blocks
    # The second turn moved only the blocks the decode worker lacked.
    moved = [metric(t, "baton_kv_transfer_bytes_sum") for t in (before, after)]
    count = [metric(t, "baton_kv_transfer_bytes_count") for t in (before, after)]
    assert count[1] - count[0] == 1
    # builtin://tiny in float32: 4 layers x K,V x 8 heads x 16 tokens x 32 x 4 bytes a block. The
    # prompt spans 15+ blocks; only the tail past what the first turn left (its answer and the new
    # question) moves.
    per_block = 4 * 2 * 8 * 16 * 32 * 4
    assert 0 < moved[1] - moved[0] <= 4 * per_block


def test_a_decode_pod_deleted_mid_stream_loses_and_repeats_no_token(
    real_sandbox: Any, pool: dict[str, Any]
) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=pool["url"], api_key="unused", max_retries=0, timeout=300)
    prompt, n = "Stream a long answer", 1800
    extra = {"ignore_eos": True}
    expected = (
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=n, temperature=0, extra_body=extra)
        .choices[0]
        .text
    )
    (old,) = pods(real_sandbox, sel("decode"))
    pieces: list[str] = []
    finish: list[str | None] = []
    started = threading.Event()

    def consume() -> None:
        stream = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=n, temperature=0, stream=True, extra_body=extra
        )
        for chunk in stream:
            pieces.append(chunk.choices[0].text)
            if len(pieces) >= 20:
                started.set()
            if chunk.choices[0].finish_reason:
                finish.append(chunk.choices[0].finish_reason)
        started.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    assert started.wait(120), "the stream did not start"
    real_sandbox.kubectl("delete", "pod", old["metadata"]["name"], "--wait=false")
    reader.join(300)
    assert not reader.is_alive(), "the stream did not finish"
    assert "".join(pieces) == expected
    assert finish == ["length"]
    # The Deployment replaces the pod, and the new one becomes Ready through its probes.
    new = wait_until(
        lambda: [
            p
            for p in pods(real_sandbox, sel("decode"))
            if p["metadata"]["uid"] != old["metadata"]["uid"] and ready(p)
        ],
        timeout=START_S,
        what="a replacement decode pod Ready",
        interval=0.5,
    )
    assert len(new) == 1


def test_scaling_decode_to_two_sends_requests_to_the_new_pod(real_sandbox: Any, pool: dict[str, Any]) -> None:
    from openai import OpenAI

    wait_until(
        lambda: ready_pods(real_sandbox, sel("decode"), 1),
        timeout=START_S,
        what="one Ready decode pod",
        interval=0.5,
    )
    (first,) = pods(real_sandbox, sel("decode"))
    real_sandbox.kubectl(
        "patch", "inferencepool", POOL, "--type=merge", "-p", '{"spec":{"decode":{"replicas":2}}}'
    )
    both = wait_until(
        lambda: ready_pods(real_sandbox, sel("decode"), 2),
        timeout=START_S,
        what="two Ready decode pods",
        interval=0.5,
    )
    (added,) = [p for p in both if p["metadata"]["uid"] != first["metadata"]["uid"]]
    client = OpenAI(base_url=pool["url"], api_key="unused", max_retries=0, timeout=120)

    def served_by_added() -> float:
        # Concurrent requests: the router spreads them by free KV blocks and load.
        threads = [
            threading.Thread(
                target=lambda i=i: client.completions.create(
                    model=MODEL,
                    prompt=f"request {i}",
                    max_tokens=64,
                    temperature=0,
                    extra_body={"ignore_eos": True},
                )
            )
            for i in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        _, text = http_get(f"http://{added['status']['podIP']}:8081/metrics")
        return metric(text, "baton_worker_requests_total", role="decode")

    assert (
        wait_until(served_by_added, timeout=120, what="the new decode pod to serve requests", interval=0.1)
        > 0
    )
    wait_until(
        lambda: (
            real_sandbox.kubectl_json("get", "inferencepool", POOL)["status"]["decode"]["readyReplicas"] == 2
        ),
        timeout=60,
        what="status.decode.readyReplicas == 2",
        interval=0.5,
    )


def test_a_model_settings_change_rolls_the_pods(real_sandbox: Any, pool: dict[str, Any]) -> None:
    before = {p["metadata"]["uid"] for role in ("prefill", "decode") for p in pods(real_sandbox, sel(role))}
    real_sandbox.kubectl(
        "patch", "inferencepool", POOL, "--type=merge", "-p", '{"spec":{"model":{"maxModelLen":1024}}}'
    )

    def rolled() -> bool:
        now = [p for role in ("prefill", "decode") for p in pods(real_sandbox, sel(role))]
        fresh = [p for p in now if p["metadata"]["uid"] not in before]
        return len(now) == 3 and len(fresh) == 3 and all(ready(p) for p in fresh)

    wait_until(
        rolled,
        timeout=2 * START_S,
        what="new prefill and decode pods Ready after the spec change",
        interval=0.5,
    )
    for p in pods(real_sandbox, sel("decode")):
        cmd = p["spec"]["containers"][0]["command"]
        assert cmd[cmd.index("--max-model-len") + 1] == "1024"
    obj = wait_until(
        lambda: ready_pool(real_sandbox), timeout=START_S, what="the pool Ready again", interval=0.5
    )
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert answers(pool["url"], MODEL)["completions"][0]


def _namespace(sb: Any, level: str) -> str:
    ns = f"pss-{level}-{uuid.uuid4().hex[:6]}"
    sb.kubectl("create", "namespace", ns)
    sb.kubectl("label", "namespace", ns, f"pod-security.kubernetes.io/enforce={level}")
    return ns


def test_a_restricted_namespace_runs_a_keyed_cpu_pool_and_refuses_an_rdma_one(
    real_sandbox: Any, operator_pod: dict[str, Any]
) -> None:
    import yaml
    from openai import AuthenticationError, OpenAI

    ns = _namespace(real_sandbox, "restricted")
    key = f"sk-{uuid.uuid4().hex}"
    try:
        # The router asks for an API key read from a Secret (spec.router.auth.apiKeySecretRef).
        keyed = yaml.safe_load(EXAMPLE.read_text())
        keyed["metadata"]["namespace"] = ns
        keyed["spec"]["router"]["auth"] = {"apiKeySecretRef": {"name": "router-keys"}}
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "router-keys", "namespace": ns},
            "stringData": {"api-key": key},
        }
        real_sandbox.apply([secret, keyed])
        for role in ("prefill", "decode", "router"):
            wait_until(
                lambda role=role: ready_pods(real_sandbox, sel(role), 1, ns),
                timeout=START_S,
                what=f"the {role} pod Ready in {ns}",
                interval=0.5,
            )
        ip = real_sandbox.kubectl_json("get", "service", f"{POOL}-router", "-n", ns)["spec"]["clusterIP"]
        # A Ready pod is not yet a Service that answers: kube-proxy programs the ClusterIP after.
        wait_until(
            lambda: http_get(f"http://{ip}:8000/health")[0] == 200,
            timeout=60,
            what=f"the router's Service {ip}:8000 answering /health",
            interval=0.5,
        )

        def client(api_key: str) -> OpenAI:
            return OpenAI(base_url=f"http://{ip}:8000/v1", api_key=api_key, max_retries=0, timeout=120)

        out = client(key).completions.create(model=MODEL, prompt="restricted", max_tokens=4, temperature=0)
        assert out.usage.completion_tokens == 4
        with pytest.raises(AuthenticationError) as refused_key:
            client("sk-wrong").completions.create(model=MODEL, prompt="restricted", max_tokens=4)
        assert refused_key.value.code == "invalid_api_key"
        # The kubelet's probes still reach the open health endpoints.
        code, _ = http_get(f"http://{ip}:8000/health")
        assert code == 200
        # An RDMA pool's workers add IPC_LOCK: neither "restricted" nor "baseline" admits them.
        rdma = {
            "apiVersion": "baton.dev/v1alpha1",
            "kind": "InferencePool",
            "metadata": {"name": "rdma", "namespace": ns},
            "spec": {"model": {"source": "builtin://tiny"}, "kvTransfer": {"rdmaResource": "rdma/ib"}},
        }
        real_sandbox.apply([rdma])
        refused = wait_until(
            lambda: [
                e
                for e in real_sandbox.kubectl_json("get", "events", "-n", ns)["items"]
                if e["reason"] == "FailedCreate" and "IPC_LOCK" in e["message"]
            ],
            timeout=START_S,
            what="the RDMA pool's pods refused by PodSecurity",
            interval=0.5,
        )
        assert "violates PodSecurity" in refused[0]["message"]
        template = real_sandbox.kubectl_json("get", "deployment", "rdma-decode", "-n", ns)["spec"]["template"]
        baseline = _namespace(real_sandbox, "baseline")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "probe", "namespace": baseline},
            "spec": template["spec"],
        }
        proc = real_sandbox.kubectl(
            "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
        )
        assert proc.returncode != 0 and "IPC_LOCK" in proc.stderr, proc.stderr
        real_sandbox.kubectl("delete", "namespace", baseline, "--wait=false")
    finally:
        real_sandbox.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_gpu_pools_still_land_on_the_simulated_gpu_nodes(
    real_sandbox: Any, operator_pod: dict[str, Any]
) -> None:
    real_sandbox.kubectl("apply", "-f", str(ROOT / "examples" / "inferencepool-tiny.yaml"))
    try:
        for role, pool_prefix in (("prefill", "h100-"), ("decode", "a100-")):
            (pod,) = wait_until(
                lambda role=role: ready_pods(real_sandbox, f"baton.dev/pool=tiny,baton.dev/role={role}", 1),
                timeout=START_S,
                what=f"the GPU pool's {role} pod Running on a kwok node",
                interval=0.5,
            )
            assert pod["spec"]["nodeName"].startswith(pool_prefix), pod["spec"]["nodeName"]
            assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    finally:
        real_sandbox.kubectl("delete", "inferencepool", "tiny", "--wait=false", check=False)
    wait_until(
        lambda: not pods(real_sandbox, "baton.dev/pool=tiny"),
        timeout=START_S,
        what="the GPU pool's pods gone",
        interval=0.5,
    )


def test_deleting_the_pool_removes_every_child_and_pod(real_sandbox: Any, pool: dict[str, Any]) -> None:
    real_sandbox.kubectl("delete", "inferencepool", POOL, "--wait=false")
    kinds = (
        "statefulsets,deployments,services,configmaps,poddisruptionbudgets,serviceaccounts,roles,rolebindings,"
        "networkpolicies"
    )

    def gone() -> bool:
        children = real_sandbox.kubectl_json("get", kinds, "-l", f"baton.dev/pool={POOL}")["items"]
        return not children and not pods(real_sandbox, f"baton.dev/pool={POOL}")

    wait_until(gone, timeout=START_S, what=f"every child and pod of {POOL} to be gone", interval=0.5)
    assert real_sandbox.kubectl("get", "inferencepool", POOL, check=False).returncode != 0
