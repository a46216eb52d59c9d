"""Spec parsing: defaults of the CRD, errors naming the field."""

from __future__ import annotations

import pytest
from baton_operator.spec import SpecError, parse_pool


def body(spec, name="p"):
    return {"metadata": {"name": name, "namespace": "ns", "uid": "u", "generation": 1}, "spec": spec}


def test_defaults_match_the_architecture():
    pool = parse_pool(body({"model": {"source": "builtin://tiny"}}), "img")
    s = pool.spec
    assert (s.model.name, s.model.dtype, s.model.max_model_len) == ("p", "bfloat16", 8192)
    assert (s.prefill.tensor_parallel_size, s.prefill.max_batch_size, s.prefill.gpu_type) == (1, 1, "H100")
    assert (s.decode.tensor_parallel_size, s.decode.max_batch_size, s.decode.gpu_type) == (1, 64, "A100")
    assert (s.router.replicas, s.router.service_type, s.router.port) == (1, "ClusterIP", 8000)
    assert (s.kv_transfer.backend, s.kv_transfer.rdma_resource) == ("auto", "")
    assert (s.autoscaling.mode, s.autoscaling.interval_seconds) == ("builtin", 5)
    a = s.decode.autoscaling
    assert (a.enabled, a.min_replicas, a.max_replicas, a.target_queue_depth) == (False, 1, 8, 4.0)
    assert (a.tolerance, a.max_scale_step, a.scale_down_stabilization_seconds) == (0.1, 4, 300)
    assert s.image == "img"
    assert (s.prefill.device, s.decode.device) == ("cuda", "cuda")
    assert s.prefill.uses_gpus and s.decode.uses_gpus


def test_a_cpu_role_uses_no_gpu():
    pool = parse_pool(body({"model": {"source": "builtin://tiny"}, "decode": {"device": "cpu"}}), "img")
    assert (pool.spec.prefill.device, pool.spec.decode.device) == ("cuda", "cpu")
    assert pool.spec.prefill.uses_gpus and not pool.spec.decode.uses_gpus


# The autoscaling fields' errors are in test_autoscaling_config_signal.py, through both entry points.
@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.model"),
        ({"model": {"name": "x"}}, "spec.model.source"),
        ({"model": {"source": "s3://bucket"}}, "spec.model.source"),
        (
            {"model": {"source": "builtin://tiny"}, "prefill": {"tensorParallelSize": 3}},
            "spec.prefill.tensorParallelSize",
        ),
        ({"model": {"source": "builtin://tiny"}, "decode": {"replicas": -1}}, "spec.decode.replicas"),
        ({"model": {"source": "builtin://tiny"}, "decode": {"maxBatchSize": 0}}, "spec.decode.maxBatchSize"),
        ({"model": {"source": "builtin://tiny"}, "decode": {"gpu": {"type": "TPU"}}}, "spec.decode.gpu.type"),
        ({"model": {"source": "builtin://tiny", "dtype": "int3"}}, "spec.model.dtype"),
        (
            {"model": {"source": "builtin://tiny"}, "kvTransfer": {"backend": "rdma"}},
            "spec.kvTransfer.backend",
        ),
        (
            {"model": {"source": "builtin://tiny"}, "router": {"service": {"port": 70000}}},
            "spec.router.service.port",
        ),
        ({"model": {"source": "builtin://tiny"}, "prefill": "big"}, "spec.prefill"),
        (
            {"model": {"source": "builtin://tiny"}, "kvTransfer": {"ucx": {"PATH": "/x"}}},
            "spec.kvTransfer.ucx",
        ),
        (
            {"model": {"source": "builtin://tiny"}, "kvTransfer": {"ucx": {"ucx_tls": "tcp"}}},
            "spec.kvTransfer.ucx",
        ),
        (
            {"model": {"source": "builtin://tiny"}, "kvTransfer": {"ucx": {"UCX_TLS": 1}}},
            "spec.kvTransfer.ucx.UCX_TLS",
        ),
        (
            {
                "model": {"source": "builtin://tiny"},
                "kvTransfer": {"ucx": {f"UCX_V{i}": "1" for i in range(33)}},
            },
            "spec.kvTransfer.ucx",
        ),
        (
            {"model": {"source": "builtin://tiny"}, "kvTransfer": {"ucx": ["UCX_TLS=tcp"]}},
            "spec.kvTransfer.ucx",
        ),
        (
            {"model": {"source": "builtin://tiny"}, "kvTransfer": {"ucx": {"UCX_TLS": ""}}},
            "spec.kvTransfer.ucx.UCX_TLS",
        ),
        ({"model": {"source": "builtin://tiny"}, "decode": {"device": "tpu"}}, "spec.decode.device"),
        (
            {"model": {"source": "builtin://tiny"}, "router": {"auth": {"apiKeySecretRef": {"key": "k"}}}},
            "spec.router.auth.apiKeySecretRef.name",
        ),
        (
            {"model": {"source": "builtin://tiny"}, "prefill": {"device": "cpu", "tensorParallelSize": 2}},
            "spec.prefill.tensorParallelSize",
        ),
        (
            {"model": {"source": "builtin://tiny"}, "decode": {"device": "cpu", "gpu": {"type": "A100"}}},
            "spec.decode.gpu",
        ),
        ({"model": {"source": "hf://o/m", "secretRef": {"key": "t"}}}, "spec.model.secretRef.name"),
        ({"model": {"source": "hf://o/m", "secretRef": "hf"}}, "spec.model.secretRef"),
        (
            {"model": {"source": "builtin://tiny"}, "env": [{"name": "HF_TOKEN", "value": "x"}]},
            "spec.env[0].name",
        ),
        ({"model": {"source": "builtin://tiny"}, "envFrom": [{"prefix": "X_"}]}, "spec.envFrom[0]"),
        ({"model": {"source": "builtin://tiny"}, "imagePullSecrets": [{}]}, "spec.imagePullSecrets[0].name"),
    ],
)
def test_bad_specs_name_the_field(spec, field):
    with pytest.raises(SpecError) as err:
        parse_pool(body(spec), "img")
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_long_names_are_refused():
    with pytest.raises(SpecError) as err:
        parse_pool(body({"model": {"source": "builtin://tiny"}}, name="x" * 41), "img")
    assert err.value.field == "metadata.name"


def test_ucx_settings_are_kept_sorted_by_name():
    spec = {
        "model": {"source": "builtin://tiny"},
        "kvTransfer": {"ucx": {"UCX_TLS": "tcp,cuda_ipc", "UCX_NET_DEVICES": "mlx5_0:1"}},
    }
    s = parse_pool(body(spec), "img").spec
    assert s.kv_transfer.ucx == (("UCX_NET_DEVICES", "mlx5_0:1"), ("UCX_TLS", "tcp,cuda_ipc"))
    assert parse_pool(body({"model": {"source": "builtin://tiny"}}), "img").spec.kv_transfer.ucx == ()
