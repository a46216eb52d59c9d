"""Bad specs are refused at apply time with a message naming the field; unschedulable pools say why."""

from __future__ import annotations

import time

import pytest
from baton_dev.sandbox import procs
from baton_dev.sandbox.operator_proc import start_operator, stop_operator
from operator_helpers import (
    READY_TIMEOUT_S,
    RESYNC_SECONDS,
    apply,
    condition,
    delete_pool_and_pods,
    get,
    is_ready,
    metric,
    pool_status,
    tiny_pool,
)
from polling import wait_until

pytestmark = pytest.mark.sandbox

BAD_SPECS = [
    ({"prefill": {"tensorParallelSize": 3}}, "spec.prefill.tensorParallelSize"),
    ({"decode": {"replicas": -1}}, "spec.decode.replicas"),
    ({"decode": {"maxBatchSize": 0}}, "spec.decode.maxBatchSize"),
    ({"decode": {"gpu": {"type": "TPUv5"}}}, "spec.decode.gpu.type"),
    ({"kvTransfer": {"backend": "carrier-pigeon"}}, "spec.kvTransfer.backend"),
    ({"model": {"source": "s3://bucket/model"}}, "spec.model.source"),
    ({"model": {"name": "no-source"}}, "spec.model.source"),
    (
        {"prefill": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
        "spec.prefill.autoscaling.minReplicas",
    ),
    ({"decode": {"autoscaling": {"tolerance": 1.5}}}, "spec.decode.autoscaling.tolerance"),
    (
        {"prefill": {"replicas": 1, "colour": "blue"}},
        "spec.prefill.colour",
    ),  # unknown field, strict validation
    ({"autoscaling": {"mode": "hpa"}}, "spec.autoscaling.mode"),
    ({"kvTransfer": {"ucx": {"LD_PRELOAD": "/tmp/x.so"}}}, "spec.kvTransfer.ucx"),  # only UCX_ variables
    ({"kvTransfer": {"ucx": {"UCX_TLS": 5}}}, "spec.kvTransfer.ucx.UCX_TLS"),
    ({"kvTransfer": {"ucx": {"UCX_NET_DEVICES": ""}}}, "spec.kvTransfer.ucx.UCX_NET_DEVICES"),
    ({"decode": {"device": "tpu"}}, "spec.decode.device"),
    # CEL: a CPU role has no tensor parallelism and no GPU type.
    ({"prefill": {"device": "cpu", "tensorParallelSize": 2}}, "spec.prefill.tensorParallelSize must be 1"),
    ({"decode": {"device": "cpu", "gpu": {"type": "A100"}}}, "spec.decode.gpu must not be set"),
    # CEL: names the operator sets are refused in spec.env, saying where they belong.
    (
        {"env": [{"name": "HF_TOKEN", "value": "x"}]},
        "HF_TOKEN is reserved in spec.env: set it with spec.model.secretRef",
    ),
    ({"env": [{"name": "A", "value": "1"}, {"name": "UCX_TLS", "value": "tcp"}]}, "spec.env[1].name"),
    ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "spec.env[1]"),  # a map list
    ({"env": [{"name": "A", "valueFrom": {}}]}, "spec.env[0].valueFrom"),
    ({"envFrom": [{"prefix": "X_"}]}, "spec.envFrom[0]"),
    ({"imagePullSecrets": [{"name": ""}]}, "spec.imagePullSecrets[0].name"),
    ({"model": {"source": "hf://org/m", "secretRef": {"key": "token"}}}, "spec.model.secretRef.name"),
]


@pytest.mark.parametrize(("override", "field"), BAD_SPECS, ids=[f for _, f in BAD_SPECS])
def test_operator_bad_spec_is_refused_naming_the_field(sandbox, namespace, override, field):
    proc = apply(sandbox, tiny_pool("bad", namespace, **override), check=False)
    assert proc.returncode != 0, f"{field}: apply was accepted"
    assert field in proc.stderr, proc.stderr
    assert sandbox.kubectl("get", "inferencepool", "bad", "-n", namespace, check=False).returncode != 0


def test_operator_tp_size_that_cannot_split_the_kv_heads_is_refused_naming_the_numbers(sandbox, namespace):
    body = tiny_pool(
        "tpsplit", namespace, prefill={"tensorParallelSize": 8}, decode={"tensorParallelSize": 2}
    )
    body["spec"]["model"]["numKvHeads"] = 4
    proc = apply(sandbox, body, check=False)
    assert proc.returncode != 0, "TP 8 over 4 KV heads was accepted"
    assert "spec.prefill.tensorParallelSize (8) must divide spec.model.numKvHeads" in proc.stderr, proc.stderr
    assert "spec.decode" not in proc.stderr, proc.stderr  # TP 2 divides 4
    body["spec"]["prefill"]["tensorParallelSize"] = 4
    proc = apply(sandbox, body, check=False)
    assert proc.returncode == 0, proc.stderr
    sandbox.kubectl("delete", "inferencepool", "tpsplit", "-n", namespace, "--wait=false")


def test_operator_missing_model_and_long_name_are_refused(sandbox, namespace):
    body = tiny_pool("bad", namespace)
    del body["spec"]["model"]
    proc = apply(sandbox, body, check=False)
    assert proc.returncode != 0 and "spec.model" in proc.stderr, proc.stderr
    proc = apply(sandbox, tiny_pool("x" * 41, namespace), check=False)
    assert proc.returncode != 0 and "metadata.name must be at most 40 characters" in proc.stderr, proc.stderr


def test_operator_unschedulable_pool_reports_the_scheduler_reason(sandbox, operator_process, namespace):
    # 3 prefill pods of 8 GPUs each, but the sandbox has 2 H100 nodes of 8 GPUs.
    apply(sandbox, tiny_pool("big", namespace, prefill={"replicas": 3, "tensorParallelSize": 8}))
    try:
        check_unschedulable(sandbox, namespace)
    finally:
        # pending TP 8 pods would take H100 nodes as soon as other tests free them
        delete_pool_and_pods(sandbox, namespace, "big")


def check_unschedulable(sandbox, namespace):

    def unschedulable():
        ready = condition(pool_status(sandbox, namespace, "big"), "Ready")
        return ready if ready.get("reason") == "Unschedulable" else None

    ready = wait_until(
        unschedulable, timeout=READY_TIMEOUT_S, what="Ready=False reason Unschedulable", interval=0.25
    )
    assert ready["status"] == "False"
    assert "prefill pods unschedulable" in ready["message"]
    assert "Insufficient nvidia.com/gpu" in ready["message"], ready["message"]
    degraded = condition(pool_status(sandbox, namespace, "big"), "Degraded")
    assert degraded["status"] == "True" and "Insufficient nvidia.com/gpu" in degraded["message"]
    events = sandbox.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=big"
    )
    assert any(e["reason"] == "Unschedulable" and e["type"] == "Warning" for e in events["items"])


def test_operator_gpu_type_without_nodes_reports_the_selector(sandbox, operator_process, namespace):
    # prefill off: only the decode pods' reason matters here (H100s may be busy with other tests)
    apply(
        sandbox,
        tiny_pool("l4", namespace, prefill={"replicas": 0}, decode={"replicas": 1, "gpu": {"type": "L4"}}),
    )

    def reason():
        ready = condition(pool_status(sandbox, namespace, "l4"), "Ready")
        return ready if ready.get("reason") == "Unschedulable" else None

    ready = wait_until(
        reason, timeout=READY_TIMEOUT_S, what="Ready=False reason Unschedulable", interval=0.25
    )
    assert "decode pods unschedulable" in ready["message"]
    assert "node affinity/selector" in ready["message"], ready["message"]


POD_OPTIONS = {
    "model": {"name": "tiny", "source": "builtin://tiny", "dtype": "float32", "secretRef": {"name": "hf"}},
    "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "EMPTY", "value": ""}],
    "envFrom": [{"prefix": "APP_", "configMapRef": {"name": "settings"}}],
    "imagePullSecrets": [{"name": "regcred"}],
}


def test_operator_pod_options_reach_every_pod_and_a_resync_writes_nothing(
    sandbox, operator_process, namespace
):
    # A second operator watching only this namespace, so its write counter sees this pool alone (the
    # shared sandbox holds other tests' pools); the session operator reconciles it too.
    (port,) = procs.free_ports(1)
    args = ["-n", namespace, "--standalone", f"--resync-seconds={RESYNC_SECONDS}", f"--metrics-port={port}"]
    own = start_operator(sandbox, args=args, name="operator-podopts")
    try:
        apply(sandbox, tiny_pool("opts", namespace, **POD_OPTIONS))
        wait_until(
            lambda: is_ready(sandbox, namespace, "opts"),
            timeout=READY_TIMEOUT_S,
            what="pool opts Ready",
            interval=0.25,
        )
        check_pod_options(sandbox, namespace)
        check_quiet_resync(f"http://127.0.0.1:{port}/metrics")
    finally:
        stop_operator(sandbox, own)
        delete_pool_and_pods(sandbox, namespace, "opts")


def check_pod_options(sandbox, namespace):
    for kind, name in (
        ("statefulset", "opts-prefill"),
        ("deployment", "opts-decode"),
        ("deployment", "opts-router"),
    ):
        pod = get(sandbox, kind, namespace, name)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "HF_TOKEN"}, name
        assert env["HF_HUB_OFFLINE"]["value"] == "1" and env["EMPTY"] == {"name": "EMPTY"}, name
        assert container["envFrom"] == POD_OPTIONS["envFrom"], name
        assert pod["imagePullSecrets"] == [{"name": "regcred"}], name
        if name != "opts-router":
            # builtin://tiny in float32 on one GPU: its weights and a 4 GiB runtime, no limit.
            assert container["resources"]["requests"]["memory"] == "4160Mi", name
            assert "memory" not in container["resources"]["limits"], name


def check_quiet_resync(url):
    """A whole resync period in which the pool was reconciled again and nothing was written."""

    def quiet_window():
        writes = metric(url, "baton_operator_api_writes_total")
        reconciles = metric(url, "baton_operator_reconciles_total", result="ok")
        t0 = time.monotonic()
        wait_until(
            lambda: (
                time.monotonic() - t0 > RESYNC_SECONDS + 1
                and metric(url, "baton_operator_reconciles_total", result="ok") > reconciles
            ),
            timeout=RESYNC_SECONDS * 4,
            what="a resync",
            interval=0.5,
        )
        return metric(url, "baton_operator_api_writes_total") == writes

    # The first window may still see the last readiness update; then a resync must be silent.
    wait_until(quiet_window, timeout=60, what="a resync period without API writes", interval=0)
