"""Builders: spec -> manifests. Pure; no cluster."""

from __future__ import annotations

import copy

import pytest
from baton_operator import builders
from baton_operator.spec import Pool, parse_pool

IMAGE = "example.org/baton-worker:test"
LABEL_KEYS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "baton.dev/pool",
    "baton.dev/role",
}


def make_pool(**spec_overrides) -> Pool:
    spec = {
        "model": {"name": "llama", "source": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        "prefill": {"replicas": 2, "tensorParallelSize": 8, "gpu": {"type": "H100"}},
        "decode": {"replicas": 2, "gpu": {"type": "A100"}},
    }
    for key, value in spec_overrides.items():
        spec[key] = value
    body = {
        "apiVersion": "baton.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": "demo", "namespace": "ml", "uid": "u-1", "generation": 3},
        "spec": spec,
    }
    return parse_pool(body, IMAGE)


def test_every_child_and_pod_carries_the_architecture_labels_and_owner():
    pool = make_pool()
    for child in builders.build_children(pool):
        meta = child["metadata"]
        assert LABEL_KEYS <= set(meta["labels"]), child["kind"]
        assert meta["labels"]["baton.dev/pool"] == "demo"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "baton-operator"
        assert meta["namespace"] == "ml"
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "baton.dev/v1alpha1",
            "kind": "InferencePool",
            "name": "demo",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        template = child.get("spec", {}).get("template")
        if template:
            assert LABEL_KEYS <= set(template["metadata"]["labels"])
            role = meta["labels"]["baton.dev/role"]
            assert template["metadata"]["labels"]["baton.dev/role"] == role


@pytest.mark.parametrize(
    ("role", "build", "gpus", "product"),
    [
        ("prefill", builders.build_prefill_statefulset, "8", "NVIDIA-H100-80GB-HBM3"),
        ("decode", builders.build_decode_deployment, "1", "NVIDIA-A100-SXM4-80GB"),
    ],
)
def test_worker_pods_ask_for_gpus_of_the_right_type(role, build, gpus, product):
    workload = build(make_pool())
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": product}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert container["command"][:4] == ["baton", "worker", "--role", role]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "metrics"}
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    grace = container["command"][container["command"].index("--drain-grace-s") + 1]
    assert 0 < int(grace) < pod["terminationGracePeriodSeconds"]
    assert pod["terminationGracePeriodSeconds"] >= 120
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert workload["spec"]["replicas"] == 2


def test_cpu_roles_request_no_gpu_and_run_the_worker_on_the_cpu():
    pool = make_pool(
        prefill={"device": "cpu", "resources": {"requests": {"cpu": "2"}}},
        decode={"device": "cpu", "nodeSelector": {"pool": "cpu"}},
    )
    for role, build in (
        ("prefill", builders.build_prefill_statefulset),
        ("decode", builders.build_decode_deployment),
    ):
        pod = build(pool)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        resources = container["resources"]
        assert "nvidia.com/gpu" not in resources["requests"] and "nvidia.com/gpu" not in resources["limits"]
        assert container["command"][container["command"].index("--device") + 1] == "cpu"
        # No GPU node selector and no toleration of the GPU taint: the pod lands on CPU nodes.
        assert "nvidia.com/gpu.product" not in pod.get("nodeSelector", {})
        assert "tolerations" not in pod, role
    assert builders.build_prefill_statefulset(pool)["spec"]["template"]["spec"]["containers"][0]["resources"][
        "requests"
    ] == {"cpu": "2", "memory": "4Gi"}  # the user's cpu, and memory for an unknown (hf://) model on the CPU
    assert builders.build_decode_deployment(pool)["spec"]["template"]["spec"]["nodeSelector"] == {
        "pool": "cpu"
    }
    # A GPU role of the same pool keeps its GPUs.
    mixed = make_pool(decode={"device": "cpu"})
    (gpu_container,) = builders.build_prefill_statefulset(mixed)["spec"]["template"]["spec"]["containers"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert gpu_container["command"][gpu_container["command"].index("--device") + 1] == "cuda"


def test_user_node_selector_tolerations_affinity_resources_are_merged():
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    pool = make_pool(
        prefill={
            "replicas": 1,
            "tensorParallelSize": 4,
            "gpu": {"type": "H100"},
            "nodeSelector": {"zone": "a"},
            "tolerations": [toleration],
            "affinity": affinity,
            # the user cannot override the GPU count: it comes from tensorParallelSize
            "resources": {"requests": {"cpu": 8, "nvidia.com/gpu": "1"}, "limits": {"memory": "200Gi"}},
        }
    )
    pod = builders.build_prefill_statefulset(pool)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "zone": "a"}
    assert toleration in pod["tolerations"] and len(pod["tolerations"]) == 2
    assert pod["affinity"] == affinity
    res = pod["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "8", "nvidia.com/gpu": "4"}
    assert res["limits"] == {"memory": "200Gi", "nvidia.com/gpu": "4"}


def test_rdma_resource_and_ipc_lock_only_when_asked():
    plain = builders.build_decode_deployment(make_pool())["spec"]["template"]["spec"]["containers"][0]
    assert "rdma/ib" not in plain["resources"]["limits"]
    assert plain["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    rdma = builders.build_decode_deployment(
        make_pool(kvTransfer={"backend": "nixl", "rdmaResource": "rdma/ib"})
    )
    container = rdma["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["rdma/ib"] == "1"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert "--kv-backend" in container["command"]
    assert container["command"][container["command"].index("--kv-backend") + 1] == "nixl"


def test_autoscaled_role_omits_replicas_so_the_autoscaler_owns_them():
    pool = make_pool(
        decode={"replicas": 3, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}}
    )
    assert "replicas" not in builders.build_decode_deployment(pool)["spec"]
    assert builders.build_prefill_statefulset(pool)["spec"]["replicas"] == 2


def test_services_prefill_headless_router_uses_spec_port_and_type():
    pool = make_pool(router={"replicas": 2, "service": {"type": "LoadBalancer", "port": 9000}})
    prefill = builders.build_service(pool, "prefill")
    assert prefill["spec"]["clusterIP"] == "None"
    assert [p["name"] for p in prefill["spec"]["ports"]] == ["grpc", "metrics"]
    decode = builders.build_service(pool, "decode")
    assert "clusterIP" not in decode["spec"]
    router = builders.build_service(pool, "router")
    assert router["spec"]["type"] == "LoadBalancer"
    assert router["spec"]["ports"] == [
        {"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}
    ]
    deploy = builders.build_router_deployment(pool)
    assert deploy["spec"]["replicas"] == 2
    cmd = deploy["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:2] == ["baton", "router"]
    for flag, value in (
        ("--prefill-service", "demo-prefill"),
        ("--decode-service", "demo-decode"),
        ("--namespace", "ml"),
        ("--port", "9000"),
    ):
        assert cmd[cmd.index(flag) + 1] == value
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "demo-router"


def test_router_mounts_the_config_and_model_it_loads_the_tokenizer_from():
    pool = make_pool(model={"name": "llama", "source": "pvc://models/llama-3-8b"})
    pod = builders.build_router_deployment(pool)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert env["BATON_CONFIG"].startswith("/etc/baton/")
    assert mounts["/etc/baton"] == "config" and mounts["/models/models"] == "model"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"]["claimName"] == "models"
    assert "dshm" not in volumes


def test_statefulset_is_bound_to_its_headless_service_and_starts_pods_in_parallel():
    sts = builders.build_prefill_statefulset(make_pool())
    assert sts["spec"]["serviceName"] == "demo-prefill"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["selector"]["matchLabels"] == builders.selector_labels(make_pool(), "prefill")


def test_config_change_changes_the_pod_template_hash_and_selectors_never_change():
    a, b = make_pool(), make_pool(model={"name": "llama", "source": "hf://org/other"})
    ta = builders.build_decode_deployment(a)
    tb = builders.build_decode_deployment(b)
    hash_key = builders.CONFIG_HASH_ANNOTATION
    assert (
        ta["spec"]["template"]["metadata"]["annotations"][hash_key]
        != (tb["spec"]["template"]["metadata"]["annotations"][hash_key])
    )
    assert ta["spec"]["selector"] == tb["spec"]["selector"]


def test_pvc_source_is_mounted_read_only():
    pool = make_pool(model={"name": "m", "source": "pvc://weights/llama-8b"})
    pod = builders.build_prefill_statefulset(pool)["spec"]["template"]["spec"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod[
        "volumes"
    ]


def test_builders_are_pure_and_deterministic():
    pool = make_pool()
    first = builders.build_children(pool)
    again = builders.build_children(copy.deepcopy(pool))
    assert first == again
    kinds = [(c["kind"], c["metadata"]["name"]) for c in first]
    assert len(kinds) == len(set(kinds))
    assert ("StatefulSet", "demo-prefill") in kinds
    assert ("Deployment", "demo-decode") in kinds
    assert ("Deployment", "demo-router") in kinds
    assert [k for k, _ in kinds].count("PodDisruptionBudget") == 3
    assert ("ConfigMap", "demo-config") in kinds


def test_ucx_settings_go_to_both_worker_roles_and_not_the_router():
    pool = make_pool(
        kvTransfer={"ucx": {"UCX_NET_DEVICES": "mlx5_0:1", "UCX_CUDA_IPC_ENABLE_GET_ZCOPY": "auto"}}
    )

    def env(obj):
        return [(e["name"], e.get("value")) for e in obj["spec"]["template"]["spec"]["containers"][0]["env"]]

    want = [("UCX_CUDA_IPC_ENABLE_GET_ZCOPY", "auto"), ("UCX_NET_DEVICES", "mlx5_0:1")]
    for obj in (builders.build_prefill_statefulset(pool), builders.build_decode_deployment(pool)):
        assert [kv for kv in env(obj) if kv[0].startswith("UCX_")] == want
    assert not [kv for kv in env(builders.build_router_deployment(pool)) if kv[0].startswith("UCX_")]
    plain = builders.build_prefill_statefulset(make_pool())
    assert not [kv for kv in env(plain) if kv[0].startswith("UCX_")]


def test_every_pod_meets_the_restricted_pod_security_standard():
    pool = make_pool()
    for build in (
        builders.build_prefill_statefulset,
        builders.build_decode_deployment,
        builders.build_router_deployment,
    ):
        pod = build(pool)["spec"]["template"]["spec"]
        sec = pod["securityContext"]
        assert sec["runAsNonRoot"] is True and sec["runAsUser"] == 65532 != 0
        assert sec["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        c = container["securityContext"]
        assert c["allowPrivilegeEscalation"] is False and c["readOnlyRootFilesystem"] is True
        assert c["capabilities"] == {"drop": ["ALL"]}
        # With a read-only root, what the processes write has a volume.
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/tmp", "/var/cache/baton"} <= mounts
        assert all("hostPath" not in v for v in pod["volumes"])


def test_the_router_reads_its_api_keys_from_the_secret_in_its_environment():
    plain = builders.build_router_deployment(make_pool())["spec"]["template"]["spec"]["containers"][0]
    assert not [e for e in plain["env"] if e["name"] == "BATON_API_KEY"]
    pool = make_pool(router={"auth": {"apiKeySecretRef": {"name": "llm-keys"}}})
    (router,) = builders.build_router_deployment(pool)["spec"]["template"]["spec"]["containers"]
    (env,) = [e for e in router["env"] if e["name"] == "BATON_API_KEY"]
    assert env["valueFrom"] == {"secretKeyRef": {"name": "llm-keys", "key": "api-key"}}
    assert not any("llm-keys" in arg for arg in router["command"])
    # The workers never see it.
    for build in (builders.build_prefill_statefulset, builders.build_decode_deployment):
        (worker,) = build(pool)["spec"]["template"]["spec"]["containers"]
        assert not [e for e in worker["env"] if e["name"] == "BATON_API_KEY"]


@pytest.mark.parametrize(
    ("prefix_caching", "worker_flag", "router_args"),
    [
        (None, False, []),  # the default changes no command line
        ({"enabled": True, "routingWeight": 1.0}, False, []),
        ({"routingWeight": 0.5}, False, ["--prefix-weight", "0.5"]),
        ({"routingWeight": 0}, False, ["--prefix-weight", "0"]),
        ({"enabled": False}, True, ["--prefix-weight", "0"]),
    ],
)
def test_prefix_caching_settings_reach_workers_and_router(
    prefix_caching: dict | None, worker_flag: bool, router_args: list[str]
) -> None:
    from baton_operator.builders import router_command, worker_command

    spec: dict = {"model": {"source": "builtin://tiny"}}
    if prefix_caching is not None:
        spec["prefixCaching"] = prefix_caching
    pool = parse_pool({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec}, "img")
    for role in (pool.spec.prefill, pool.spec.decode):
        assert ("--no-prefix-caching" in worker_command(pool, role)) is worker_flag
    cmd = router_command(pool)
    tail = cmd[cmd.index("--prefix-weight") :] if "--prefix-weight" in cmd else []
    assert tail == router_args
